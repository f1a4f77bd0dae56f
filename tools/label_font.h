// A built-in 5x7 bitmap font for labelling comparison tiles (no font
// library): digits, letters (lower case is drawn as upper case) and
// " .,:;=_-+/()%" ; any other character draws as a hollow box.
//
// Each glyph is 5 pixels wide and 7 high, drawn at integer `scale` with one
// blank column between glyphs: a string of n characters is
// TextWidth(n, scale) pixels wide and kGlyphHeight * scale high.
#pragma once

#include <cstdint>
#include <string>

namespace rainserve::quality {

inline constexpr int kGlyphWidth = 5;
inline constexpr int kGlyphHeight = 7;

// Width in pixels of `chars` characters at `scale` (no trailing gap).
int TextWidth(int chars, int scale);

// True when the glyph of `c` has the pixel at column x (0..4), row y (0..6) set.
bool GlyphPixel(char c, int x, int y);

// Draws `text` into rgb [height, width, 3] with its top-left corner at
// (x0, y0) in `color`; pixels outside the image are clipped.
void DrawText(uint8_t* rgb, int width, int height, int x0, int y0, const std::string& text,
              int scale, const uint8_t color[3]);

}  // namespace rainserve::quality
