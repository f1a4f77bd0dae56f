#include "pipelines/core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

namespace rainserve {
namespace {

constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;

Status FileError(const std::string& path, const std::string& what) {
  return DataLossError(path + ": " + what);
}

int64_t ElementSize(at::ScalarType t) { return static_cast<int64_t>(c10::elementSize(t)); }

// The JSON header: an 8-byte little-endian length, then that many bytes of
// JSON object. Sets *header_len.
StatusOr<nlohmann::json> ReadHeader(const std::string& path, const char* map, uint64_t size,
                                    uint64_t* header_len) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(map);
  uint64_t len = 0;
  for (int i = 7; i >= 0; --i) len = (len << 8) | bytes[i];
  if (len > kMaxHeaderBytes) {
    return FileError(path, "header length " + std::to_string(len) + " exceeds the " +
                               std::to_string(kMaxHeaderBytes) + "-byte limit");
  }
  if (len > size - 8) {
    return FileError(path, "header larger than the file (" + std::to_string(len) +
                               " bytes claimed, " + std::to_string(size - 8) + " available)");
  }
  *header_len = len;
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(map + 8, map + 8 + len);
  } catch (const nlohmann::json::exception& e) {
    return FileError(path, std::string("bad JSON header: ") + e.what());
  }
  if (!header.is_object()) return FileError(path, "bad JSON header: not an object");
  return header;
}

// One tensor's header entry {dtype, shape, data_offsets}, checked against the
// `data_size` bytes of the data section.
StatusOr<SafetensorsFile::Entry> ParseEntry(const std::string& path, const std::string& name,
                                            const nlohmann::json& e, uint64_t data_size) {
  const std::string where = "tensor '" + name + "'";
  if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") ||
      !e.contains("data_offsets")) {
    return FileError(path, where + ": needs dtype, shape and data_offsets");
  }
  if (!e["dtype"].is_string()) return FileError(path, where + ": dtype must be a string");
  auto dtype = SafetensorsDType(e["dtype"].get<std::string>());
  if (!dtype.ok()) return FileError(path, where + ": " + dtype.status().message());
  SafetensorsFile::Entry entry;
  entry.dtype = *dtype;
  if (!e["shape"].is_array()) return FileError(path, where + ": shape must be a list");
  // extent: the product of the dims with 0 counted as 1, so that every
  // dim and stride of an empty tensor fits in int64 too.
  uint64_t numel = 1, extent = 1;
  for (const auto& d : e["shape"]) {
    if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0)) {
      return FileError(path, where + ": shape entries must be integers >= 0");
    }
    const uint64_t v = d.get<uint64_t>();
    if (extent > std::numeric_limits<uint64_t>::max() / 16 / std::max<uint64_t>(v, 1)) {
      return FileError(path, where + ": shape too large");
    }
    extent *= std::max<uint64_t>(v, 1);
    numel *= v;
    entry.shape.push_back(static_cast<int64_t>(v));
  }
  const auto& off = e["data_offsets"];
  if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
      !off[1].is_number_unsigned()) {
    return FileError(path, where + ": data_offsets must be two integers >= 0");
  }
  entry.begin = off[0].get<uint64_t>();
  entry.end = off[1].get<uint64_t>();
  if (entry.begin > entry.end) return FileError(path, where + ": data_offsets begin > end");
  if (entry.end > data_size) {
    return FileError(path, where + ": data offsets out of range (end " +
                               std::to_string(entry.end) + " > " + std::to_string(data_size) +
                               " data bytes; truncated file?)");
  }
  if (entry.end - entry.begin != numel * static_cast<uint64_t>(ElementSize(entry.dtype))) {
    return FileError(path, where + ": " + std::to_string(entry.end - entry.begin) +
                               " bytes do not match its shape and dtype");
  }
  return entry;
}

// No two non-empty tensors share a byte of the data section.
Status CheckNoOverlap(const std::string& path,
                      const std::map<std::string, SafetensorsFile::Entry>& entries) {
  std::vector<std::pair<uint64_t, std::string>> ranges;
  for (const auto& [name, entry] : entries) ranges.push_back({entry.begin, name});
  // Sorted by start, a tensor overlaps an earlier one iff it starts before
  // the furthest end seen so far (empty tensors overlap nothing).
  std::sort(ranges.begin(), ranges.end());
  uint64_t furthest = 0;
  std::string furthest_name;
  for (const auto& [begin, name] : ranges) {
    const SafetensorsFile::Entry& cur = entries.at(name);
    if (cur.end == cur.begin) continue;
    if (cur.begin < furthest) {
      return FileError(path, "tensors '" + furthest_name + "' and '" + name + "' overlap");
    }
    furthest = cur.end;
    furthest_name = name;
  }
  return OkStatus();
}

}  // namespace

StatusOr<at::ScalarType> SafetensorsDType(const std::string& name) {
  if (name == "F32") return at::kFloat;
  if (name == "F16") return at::kHalf;
  if (name == "BF16") return at::kBFloat16;
  if (name == "F64") return at::kDouble;
  if (name == "I64") return at::kLong;
  if (name == "I32") return at::kInt;
  if (name == "U8") return at::kByte;
  if (name == "BOOL") return at::kBool;
  return InvalidArgumentError("unknown dtype '" + name + "'");
}

const char* SafetensorsDTypeName(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return "F32";
    case at::kHalf: return "F16";
    case at::kBFloat16: return "BF16";
    case at::kDouble: return "F64";
    case at::kLong: return "I64";
    case at::kInt: return "I32";
    case at::kByte: return "U8";
    case at::kBool: return "BOOL";
    default: return nullptr;
  }
}

StatusOr<std::shared_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NotFoundError(path + ": cannot open (" + std::strerror(errno) + ")");
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return FileError(path, "not a regular file");
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return FileError(path, "truncated file: " + std::to_string(size) + " bytes, no header");
  }
  // Private, writable copy-on-write mapping: tensors may view it directly and
  // a stray in-place write never reaches the file.
  void* map = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return FileError(path, std::string("mmap failed: ") + std::strerror(errno));
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->map_ = map;
  file->map_size_ = size;
  file->self_ = file;

  uint64_t header_len = 0;
  RAINSERVE_ASSIGN_OR_RETURN(const nlohmann::json header,
                             ReadHeader(path, static_cast<const char*>(map), size, &header_len));
  const uint64_t data_size = size - 8 - header_len;
  file->data_ = static_cast<const char*>(map) + 8 + header_len;

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& e = it.value();
    if (name == "__metadata__") {
      if (!e.is_object()) return FileError(path, "__metadata__ must be an object");
      for (auto m = e.begin(); m != e.end(); ++m) {
        if (m.value().is_string()) file->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    RAINSERVE_ASSIGN_OR_RETURN(file->entries_[name], ParseEntry(path, name, e, data_size));
  }
  RAINSERVE_RETURN_IF_ERROR(CheckNoOverlap(path, file->entries_));
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) munmap(map_, map_size_);
}

StatusOr<at::Tensor> SafetensorsFile::Get(const std::string& name) const {
  const auto it = entries_.find(name);
  if (it == entries_.end()) return NotFoundError(path_ + ": no tensor '" + name + "'");
  const Entry& e = it->second;
  const auto opts = at::TensorOptions().dtype(e.dtype);
  char* ptr = const_cast<char*>(data_) + e.begin;
  if (reinterpret_cast<uintptr_t>(ptr) % ElementSize(e.dtype) != 0) {
    // Unaligned data: copy into an aligned tensor.
    at::Tensor t = at::empty(e.shape, opts);
    if (e.end > e.begin) std::memcpy(t.data_ptr(), ptr, e.end - e.begin);  // empty: no data_ptr
    return t;
  }
  std::shared_ptr<const SafetensorsFile> keep = self_.lock();
  return at::from_blob(ptr, e.shape, [keep](void*) {}, opts);
}

StatusOr<SafetensorsCheckpoint> SafetensorsCheckpoint::Open(const std::string& dir,
                                                            const std::string& base) {
  SafetensorsCheckpoint ckpt;
  const std::string single = dir + "/" + base + ".safetensors";
  const std::string index = single + ".index.json";
  std::ifstream index_in(index);
  if (!index_in) {
    RAINSERVE_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single));
    for (const auto& kv : file->entries()) ckpt.where_[kv.first] = file;
    return ckpt;
  }
  nlohmann::json j;
  try {
    index_in >> j;
  } catch (const nlohmann::json::exception& e) {
    return DataLossError(index + ": bad JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
    return DataLossError(index + ": needs a weight_map object");
  }
  std::map<std::string, std::shared_ptr<SafetensorsFile>> shards;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (!it.value().is_string()) return DataLossError(index + ": weight_map values must be file names");
    const std::string shard = it.value().get<std::string>();
    if (shard.empty() || shard.find('/') != std::string::npos) {
      return DataLossError(index + ": shard name '" + shard + "' must be a file in the folder");
    }
    if (!shards.count(shard)) {
      RAINSERVE_ASSIGN_OR_RETURN(shards[shard], SafetensorsFile::Open(dir + "/" + shard));
    }
    const auto& file = shards[shard];
    if (!file->entries().count(it.key())) {
      return DataLossError(index + ": '" + it.key() + "' is mapped to " + shard +
                           ", which does not contain it");
    }
    ckpt.where_[it.key()] = file;
  }
  return ckpt;
}

std::vector<std::string> SafetensorsCheckpoint::Names() const {
  std::vector<std::string> names;
  for (const auto& kv : where_) names.push_back(kv.first);
  return names;
}

const SafetensorsFile::Entry* SafetensorsCheckpoint::Find(const std::string& name) const {
  const auto it = where_.find(name);
  return it == where_.end() ? nullptr : &it->second->entries().at(name);
}

StatusOr<at::Tensor> SafetensorsCheckpoint::Get(const std::string& name, at::ScalarType dtype,
                                                const at::Device& device) const {
  const auto it = where_.find(name);
  if (it == where_.end()) return NotFoundError("checkpoint has no tensor '" + name + "'");
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor t, it->second->Get(name));
  if (!at::isFloatingType(t.scalar_type())) {
    return InvalidArgumentError(it->second->path() + ": tensor '" + name + "' is not floating point");
  }
  return t.to(device, dtype);
}

Status WriteSafetensors(const std::string& path,
                        const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  std::vector<std::pair<std::string, at::Tensor>> sorted(tensors);
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  nlohmann::json header = nlohmann::json::object();
  // transformers (before 4.48.2) refuses files without {"format": "pt"}.
  std::map<std::string, std::string> meta = {{"format", "pt"}};
  for (const auto& kv : metadata) meta[kv.first] = kv.second;
  header["__metadata__"] = meta;
  uint64_t offset = 0;
  std::set<std::string> seen;
  for (auto& [name, t] : sorted) {
    if (!seen.insert(name).second) return InvalidArgumentError("duplicate tensor name '" + name + "'");
    const char* dtype = SafetensorsDTypeName(t.scalar_type());
    if (dtype == nullptr) {
      return InvalidArgumentError("tensor '" + name + "': unsupported dtype " +
                                  std::string(c10::toString(t.scalar_type())));
    }
    t = t.detach().to(at::kCPU).contiguous();
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    header[name] = {{"dtype", dtype}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');  // data starts 8-byte aligned
  const std::string tmp = path + ".tmp";
  std::ofstream out(tmp, std::ios::binary);
  if (!out) return UnavailableError("cannot write '" + tmp + "'");
  unsigned char len[8];
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i, n >>= 8) len[i] = static_cast<unsigned char>(n & 0xff);
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto& [name, t] : sorted) {
    out.write(static_cast<const char*>(t.data_ptr()),
              static_cast<std::streamsize>(t.numel() * t.element_size()));
  }
  out.close();
  if (!out || std::rename(tmp.c_str(), path.c_str()) != 0) {
    return UnavailableError("cannot write '" + path + "'");
  }
  return OkStatus();
}

Status WriteModelFolder(const std::string& dir, const std::string& config_json,
                        const std::string& base,
                        const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                        int64_t max_shard_bytes) {
  ::mkdir(dir.c_str(), 0755);
  std::ofstream cfg(dir + "/config.json");
  cfg << config_json << "\n";
  if (!cfg) return UnavailableError("cannot write " + dir + "/config.json");
  return WriteCheckpoint(dir, base, tensors, max_shard_bytes);
}

Status WriteCheckpoint(const std::string& dir, const std::string& base,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       int64_t max_shard_bytes) {
  std::vector<std::vector<std::pair<std::string, at::Tensor>>> shards(1);
  int64_t current = 0;
  for (const auto& kv : tensors) {
    const int64_t bytes = kv.second.numel() * kv.second.element_size();
    if (current > 0 && current + bytes > max_shard_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(kv);
    current += bytes;
  }
  if (shards.size() == 1) return WriteSafetensors(dir + "/" + base + ".safetensors", tensors);
  nlohmann::json index;
  int64_t total = 0;
  char name[64];
  for (size_t i = 0; i < shards.size(); ++i) {
    std::snprintf(name, sizeof(name), "-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    const std::string file = base + name;
    RAINSERVE_RETURN_IF_ERROR(WriteSafetensors(dir + "/" + file, shards[i]));
    for (const auto& kv : shards[i]) {
      index["weight_map"][kv.first] = file;
      total += kv.second.numel() * kv.second.element_size();
    }
  }
  index["metadata"] = {{"total_size", total}};
  std::ofstream out(dir + "/" + base + ".safetensors.index.json");
  out << index.dump(2) << "\n";
  if (!out) return UnavailableError("cannot write the index in '" + dir + "'");
  return OkStatus();
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

StatusOr<std::vector<std::string>> MatchCheckpoint(
    const SafetensorsCheckpoint& ckpt, const std::string& dir,
    const std::vector<std::pair<std::string, std::vector<int64_t>>>& expected,
    const std::map<std::string, std::string>& aliases,
    const std::function<bool(const std::string&)>& ignore) {
  std::vector<std::string> missing, mismatched, unexpected, stored_names;
  std::set<std::string> known;
  auto check_shape = [&](const std::string& name, const std::vector<int64_t>& shape) {
    const SafetensorsFile::Entry* e = ckpt.Find(name);
    if (e != nullptr && e->shape != shape) {
      mismatched.push_back(name + " " + ShapeText(e->shape) + " (config expects " +
                           ShapeText(shape) + ")");
    }
  };
  for (const auto& [name, shape] : expected) {
    known.insert(name);
    std::string stored = name;
    const auto alias = aliases.find(name);
    if (alias != aliases.end()) {
      known.insert(alias->second);
      check_shape(alias->second, shape);
      if (!ckpt.Has(name) && ckpt.Has(alias->second)) stored = alias->second;
    }
    stored_names.push_back(stored);
    if (!ckpt.Has(stored)) {
      missing.push_back(alias != aliases.end() ? name + " (or " + alias->second + ")" : name);
    } else if (stored == name) {
      check_shape(name, shape);
    }
  }
  for (const std::string& name : ckpt.Names()) {
    if (!known.count(name) && !(ignore && ignore(name))) unexpected.push_back(name);
  }
  if (missing.empty() && mismatched.empty() && unexpected.empty()) return stored_names;
  std::ostringstream m;
  m << dir << ": checkpoint does not match config.json:";
  auto list = [&](const char* what, const std::vector<std::string>& v) {
    if (v.empty()) return;
    m << " " << v.size() << " " << what << " (";
    for (size_t i = 0; i < v.size() && i < 5; ++i) m << (i ? ", " : "") << v[i];
    m << (v.size() > 5 ? ", ...)" : ")") << ";";
  };
  list("missing", missing);
  list("shape mismatch", mismatched);
  list("unexpected", unexpected);
  return InvalidArgumentError(m.str());
}

}  // namespace rainserve
