#include "pipelines/core/lora.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <memory>

#include "common/logging.h"
#include "pipelines/core/safetensors.h"

namespace rainserve {
namespace {

using NamedParams = std::vector<std::pair<std::string, at::Tensor>>;

// What one key of a LoRA file holds for its module.
enum Part { kDown, kUp, kAlpha, kWeightDiff, kBiasDiff, kNumParts };

struct Suffix {
  const char* text;
  Part part;
};
constexpr Suffix kSuffixes[] = {
    {".lora_A.weight", kDown}, {".lora_down.weight", kDown}, {".lora_B.weight", kUp},
    {".lora_up.weight", kUp},  {".alpha", kAlpha},           {".diff", kWeightDiff},
    {".diff_b", kBiasDiff},    {".lora_B.bias", kBiasDiff},
};

// Prefixes the published formats put before the module name; lora_unet_
// names join the module's parts with '_'.
constexpr const char* kPrefixes[] = {"transformer.", "diffusion_model.", "base_model.model.",
                                     "lora_unet_"};
constexpr const char* kTextEncoderPrefixes[] = {"text_encoder", "lora_te"};

bool StartsWith(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}
bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
std::string Underscored(std::string s) {
  std::replace(s.begin(), s.end(), '.', '_');
  return s;
}

// The model's modules (a parameter name less ".weight" / ".bias") under every
// name a LoRA file may give them: diffusers, original, and both with '_'.
class ModuleIndex {
 public:
  ModuleIndex(const NamedParams& params, const ModuleRenamer& original_name) {
    for (size_t i = 0; i < params.size(); ++i) {
      const std::string& name = params[i].first;
      param_index_[name] = i;
      for (const char* suffix : {".weight", ".bias"}) {
        if (!EndsWith(name, suffix)) continue;
        const std::string module = name.substr(0, name.size() - std::string(suffix).size());
        std::string original = original_name ? original_name(module) : "";
        if (original.empty()) original = module;
        for (const std::string& alias :
             {module, original, Underscored(module), Underscored(original)}) {
          modules_.emplace(alias, module);
        }
      }
    }
  }
  // The diffusers module for a LoRA file's module name; "" when none.
  std::string Module(const std::string& name) const {
    auto it = modules_.find(name);
    return it == modules_.end() ? "" : it->second;
  }
  // The index of a parameter in `params`; -1 when the model has none.
  int64_t Param(const std::string& name) const {
    auto it = param_index_.find(name);
    return it == param_index_.end() ? -1 : static_cast<int64_t>(it->second);
  }

 private:
  std::map<std::string, std::string> modules_;
  std::map<std::string, size_t> param_index_;
};

// One file's contribution to one parameter: factor * (up @ down), or
// factor * full. Tensors as stored in the file (views of its mapping).
struct Term {
  at::Tensor up, down;  // up: [out, r(, 1...)], down: [r, in...]
  at::Tensor full;      // the parameter's shape
  double factor = 1.0;  // strength * alpha / r
};
using Terms = std::map<size_t, std::vector<Term>>;  // by parameter index

// The keys of one module in one file, by part.
struct ModuleKeys {
  std::array<std::string, kNumParts> key;
  std::array<at::Tensor, kNumParts> tensor;
};

Status KeyError(const LoraFile& file, const std::string& key, const std::string& what) {
  return InvalidArgumentError(file.path + ": LoRA key '" + key + "' " + what);
}

std::vector<int64_t> Shape(const at::Tensor& t) { return t.sizes().vec(); }

// Splits `key` into the model's module and the part it holds.
Status ParseKey(const LoraFile& file, const std::string& key, const ModuleIndex& index,
                std::string* module, Part* part) {
  for (const char* prefix : kTextEncoderPrefixes) {
    if (StartsWith(key, prefix)) {
      return KeyError(file, key,
                      "is for the text encoder; only the transformer's weights are merged");
    }
  }
  std::string name = key;
  for (const char* prefix : kPrefixes) {
    if (StartsWith(name, prefix)) {
      name = name.substr(std::string(prefix).size());
      break;
    }
  }
  for (const Suffix& s : kSuffixes) {
    if (!EndsWith(name, s.text)) continue;
    *module = index.Module(name.substr(0, name.size() - std::string(s.text).size()));
    *part = s.part;
    if (!module->empty()) return OkStatus();
    break;
  }
  return KeyError(file, key, "matches no parameter of the model");
}

// Checks one module's keys against the model and adds its terms.
Status AddModuleTerms(const LoraFile& file, const std::string& module, const ModuleKeys& m,
                      const NamedParams& params, const ModuleIndex& index, Terms* terms) {
  const int64_t w = index.Param(module + ".weight");
  const int64_t b = index.Param(module + ".bias");
  const bool has_down = m.tensor[kDown].defined(), has_up = m.tensor[kUp].defined();
  if (has_down != has_up) {
    return has_down ? KeyError(file, m.key[kDown], "has no matching lora_B / lora_up weight")
                    : KeyError(file, m.key[kUp], "has no matching lora_A / lora_down weight");
  }
  if (m.tensor[kAlpha].defined() && !has_down) {
    return KeyError(file, m.key[kAlpha], "is an alpha without a lora_down / lora_up pair");
  }
  if (has_down) {
    const at::Tensor& up = m.tensor[kUp];
    const at::Tensor& down = m.tensor[kDown];
    if (w < 0) return KeyError(file, m.key[kDown], "adapts '" + module + "', which has no weight");
    const auto ws = Shape(params[w].second);
    bool fits = up.dim() >= 2 && down.dim() >= 2 && down.dim() == static_cast<int64_t>(ws.size()) &&
                down.size(0) >= 1 && up.size(0) == ws[0] && up.size(1) == down.size(0) &&
                std::equal(ws.begin() + 1, ws.end(), down.sizes().begin() + 1);
    for (int64_t d = 2; fits && d < up.dim(); ++d) fits = up.size(d) == 1;
    if (!fits) {
      return KeyError(file, m.key[kUp],
                      ShapeText(Shape(up)) + " with '" + m.key[kDown] + "' " +
                          ShapeText(Shape(down)) + " does not fit '" + params[w].first + "' " +
                          ShapeText(ws));
    }
    double scale = 1.0;
    if (m.tensor[kAlpha].defined()) {
      if (m.tensor[kAlpha].numel() != 1) return KeyError(file, m.key[kAlpha], "is not a scalar");
      const double alpha = m.tensor[kAlpha].to(at::kDouble).item<double>();
      if (!std::isfinite(alpha)) return KeyError(file, m.key[kAlpha], "is not finite");
      scale = alpha / static_cast<double>(down.size(0));
    }
    (*terms)[w].push_back({up, down, at::Tensor(), file.strength * scale});
  }
  for (const auto& [part, target] :
       {std::make_pair(kWeightDiff, w), std::make_pair(kBiasDiff, b)}) {
    const at::Tensor& full = m.tensor[part];
    if (!full.defined()) continue;
    if (target < 0) {
      return KeyError(
          file, m.key[part],
          "adapts '" + module + "', which has no " + (part == kWeightDiff ? "weight" : "bias"));
    }
    if (Shape(full) != Shape(params[target].second)) {
      return KeyError(file, m.key[part],
                      ShapeText(Shape(full)) + " does not fit '" + params[target].first + "' " +
                          ShapeText(Shape(params[target].second)));
    }
    (*terms)[target].push_back({at::Tensor(), at::Tensor(), full, file.strength});
  }
  return OkStatus();
}

// Reads and checks one file; adds its terms (which keep its mapping alive).
Status ReadLoraFile(const LoraFile& file, const NamedParams& params, const ModuleIndex& index,
                    Terms* terms) {
  RAINSERVE_ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsFile> f, SafetensorsFile::Open(file.path));
  std::map<std::string, ModuleKeys> modules;
  for (const auto& [key, entry] : f->entries()) {
    std::string module;
    Part part = kDown;
    RAINSERVE_RETURN_IF_ERROR(ParseKey(file, key, index, &module, &part));
    ModuleKeys& m = modules[module];
    if (m.tensor[part].defined()) {
      return KeyError(file, key, "repeats '" + m.key[part] + "' for module '" + module + "'");
    }
    RAINSERVE_ASSIGN_OR_RETURN(m.tensor[part], f->Get(key));
    m.key[part] = key;
  }
  for (const auto& [module, m] : modules) {
    RAINSERVE_RETURN_IF_ERROR(AddModuleTerms(file, module, m, params, index, terms));
  }
  RAINSERVE_LOG(INFO) << "LoRA " << file.path << ": " << modules.size() << " modules, strength "
                      << file.strength;
  return OkStatus();
}

}  // namespace

Status MergeLoras(const std::vector<LoraFile>& files, const ModuleRenamer& original_name,
                  NamedParams* params) {
  const ModuleIndex index(*params, original_name);
  Terms terms;
  for (const LoraFile& file : files) {
    RAINSERVE_RETURN_IF_ERROR(ReadLoraFile(file, *params, index, &terms));
  }
  // One parameter at a time: its fp32 copy on its device, every term added,
  // then cast back to its dtype (the extra memory is one parameter in fp32).
  for (const auto& [i, list] : terms) {
    at::Tensor& param = (*params)[i].second;
    at::Tensor w = param.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);
    for (const Term& t : list) {
      if (t.full.defined()) {
        w.add_(t.full.to(w.device(), at::kFloat), t.factor);
        continue;
      }
      const at::Tensor up = t.up.to(w.device(), at::kFloat).flatten(1);      // [out, r]
      const at::Tensor down = t.down.to(w.device(), at::kFloat).flatten(1);  // [r, in...]
      w.add_(at::matmul(up, down).view(w.sizes()), t.factor);
    }
    param = w.to(param.scalar_type());
  }
  return OkStatus();
}

}  // namespace rainserve
