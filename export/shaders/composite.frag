#version 300 es
// Final compositing pass of the avatar frame: image = lowfreq + warp(texture, uv).
//
// The network's frame model ends at three tensors, the texture, the sampling grid uv and the
// low-frequency image; this pass warps the texture with PyTorch's grid_sample semantics
// (bilinear, zero padding, align_corners=False) and adds the low-frequency image. Draw one
// triangle (or quad) that covers the render target: the pass reads only gl_FragCoord, so any
// vertex shader will do.
//
// Inputs. Every texture has a single mip level (set the minification filter to NEAREST or
// LINEAR, never a mipmap filter) and is uploaded first row first, in the row order of the tensors.
//   u_texture  W_t x H_t, rgb = the texture to warp (alpha unused).
//              manual mode: RGBA32F, NEAREST.
//              hardware mode: LINEAR, CLAMP_TO_EDGE; RGBA32F where the device exposes
//              OES_texture_float_linear (desktop GL always filters it), otherwise RGBA16F.
//   u_uv       W x H, RG32F, NEAREST: per output pixel the sample point (x, y) in [-1, 1]. -1 and
//              +1 are the outer edges of the first and last texel, so texel i's centre is
//              (2i + 1) / W_t - 1. Points outside [-1, 1] read zeros.
//   u_lowfreq  W x H, RGBA32F, NEAREST, rgb = the low-frequency image.
// Output: one RGBA32F colour attachment of W x H (EXT_color_buffer_float on GLES), rgb = image,
// a = 1. Output pixel (x, y) reads texel (x, y) of u_uv and u_lowfreq, so the result read back
// with glReadPixels has the inputs' row order. A GL window puts row 0 at the bottom: flip when
// presenting the image directly.
//
// Modes, chosen when compiling: manual by default; for hardware mode insert the line
//   #define COMPOSITE_HARDWARE_FILTERING 1
// right after the #version line.
//   manual    four texelFetch taps blended in fp32: equal to grid_sample up to fp32 round-off.
//   hardware  one bilinear fetch at texture coordinate (uv + 1) / 2, which puts texel centres at
//             (i + 0.5) / W_t, as align_corners=False does. Cheaper, but the blend weights are the
//             sampler's: GPUs compute them in fixed point, commonly with 8 fractional bits, and an
//             RGBA16F texture rounds the texels to half precision.

precision highp float;
precision highp int;
precision highp sampler2D;

#ifndef COMPOSITE_HARDWARE_FILTERING
#define COMPOSITE_HARDWARE_FILTERING 0
#endif

uniform sampler2D u_texture;
uniform sampler2D u_uv;
uniform sampler2D u_lowfreq;

out vec4 o_image;

// The sample point in texel units, texel centres on integers (grid_sample's unnormalize step).
vec2 texel_position(vec2 uv, vec2 size) {
    return ((uv + 1.0) * size - 1.0) * 0.5;
}

#if COMPOSITE_HARDWARE_FILTERING

vec3 warp(vec2 uv) {
    vec2 size = vec2(textureSize(u_texture, 0));
    // Zero padding. A border colour of zero would do it in the sampler, but CLAMP_TO_BORDER needs
    // GLES 3.2 or OES/EXT_texture_border_clamp (and WebGPU has no border colour), and a copy of the
    // texture with a ring of zeros costs a pass and changes the texture coordinates. Instead the
    // sampler clamps to the edge and the result is scaled by the part of the bilinear footprint
    // that lies inside the texture: up to one texel beyond an edge grid_sample blends the edge
    // texel with zero, which is the clamped value times that part; further out the part is zero.
    vec2 p = texel_position(uv, size);
    vec2 inside = clamp(p + 1.0, 0.0, 1.0) * clamp(size - p, 0.0, 1.0);
    return textureLod(u_texture, (uv + 1.0) * 0.5, 0.0).rgb * (inside.x * inside.y);
}

#else

vec3 tap(ivec2 texel, ivec2 size) {
    bool inside = all(greaterThanEqual(texel, ivec2(0))) && all(lessThan(texel, size));
    // texelFetch outside the texture is undefined in GLES, so the fetch itself stays inside.
    vec3 value = texelFetch(u_texture, clamp(texel, ivec2(0), size - 1), 0).rgb;
    return inside ? value : vec3(0.0);
}

vec3 warp(vec2 uv) {
    ivec2 size = textureSize(u_texture, 0);
    // Far-away points read only zeros either way; the clamp keeps the int conversion defined.
    vec2 p = clamp(texel_position(uv, vec2(size)), vec2(-2.0), vec2(size) + 1.0);
    vec2 corner = floor(p);
    vec2 f = p - corner;
    ivec2 i = ivec2(corner);
    vec3 row0 = mix(tap(i, size), tap(i + ivec2(1, 0), size), f.x);
    vec3 row1 = mix(tap(i + ivec2(0, 1), size), tap(i + ivec2(1, 1), size), f.x);
    return mix(row0, row1, f.y);
}

#endif

void main() {
    ivec2 pixel = ivec2(gl_FragCoord.xy);
    vec2 uv = texelFetch(u_uv, pixel, 0).xy;
    vec3 lowfreq = texelFetch(u_lowfreq, pixel, 0).rgb;
    o_image = vec4(lowfreq + warp(uv), 1.0);
}
