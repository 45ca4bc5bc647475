// Final compositing pass of the avatar frame: image = lowfreq + warp(texture, uv).
//
// The network's frame model ends at three tensors, the texture, the sampling grid uv and the
// low-frequency image; this pass warps the texture with PyTorch's grid_sample semantics
// (bilinear, zero padding, align_corners=False) and adds the low-frequency image.
// Vertex entry point vs_fullscreen: draw(3) without vertex buffers, one triangle that covers the
// target. Fragment entry points, one per mode: fs_manual, fs_hardware.
//
// Bindings (group 0). Every texture has a single mip level and is written first row first, in
// the row order of the tensors.
//   0  source_texture  W_t x H_t, rgb = the texture to warp (alpha unused).
//                      fs_manual: rgba32float, sample type "unfilterable-float".
//                      fs_hardware: sample type "float"; rgba32float when the device has the
//                      "float32-filterable" feature, otherwise rgba16float.
//   1  uv_grid         W x H, rg32float, "unfilterable-float": per output pixel the sample point
//                      (x, y) in [-1, 1]. -1 and +1 are the outer edges of the first and last
//                      texel, so texel i's centre is (2i + 1) / W_t - 1. Points outside [-1, 1]
//                      read zeros.
//   2  lowfreq         W x H, rgba32float, "unfilterable-float", rgb = the low-frequency image.
//   3  bilinear        fs_hardware only: a "filtering" sampler, mag and min filter "linear",
//                      address mode "clamp-to-edge" on u and v.
// Output: one rgba32float colour target of W x H, rgb = image, a = 1. Output pixel (x, y) (row 0
// at the top, as WebGPU's framebuffer and texture coordinates both have it) reads texel (x, y)
// of uv_grid and lowfreq.
//
// Modes:
//   fs_manual    four textureLoad taps blended in fp32: equal to grid_sample up to fp32 round-off.
//   fs_hardware  one bilinear fetch at texture coordinate (uv + 1) / 2, which puts texel centres
//                at (i + 0.5) / W_t, as align_corners=False does. Cheaper, but the blend weights
//                are the sampler's: GPUs compute them in fixed point, commonly with 8 fractional
//                bits, and an rgba16float texture rounds the texels to half precision.

@group(0) @binding(0) var source_texture: texture_2d<f32>;
@group(0) @binding(1) var uv_grid: texture_2d<f32>;
@group(0) @binding(2) var lowfreq: texture_2d<f32>;
@group(0) @binding(3) var bilinear: sampler;

@vertex
fn vs_fullscreen(@builtin(vertex_index) index: u32) -> @builtin(position) vec4<f32> {
    // Corners (-1, -1), (3, -1), (-1, 3): the triangle's part inside clip space is the target.
    let x = select(-1.0, 3.0, index == 1u);
    let y = select(-1.0, 3.0, index == 2u);
    return vec4<f32>(x, y, 0.0, 1.0);
}

// The sample point in texel units, texel centres on integers (grid_sample's unnormalize step).
fn texel_position(uv: vec2<f32>, size: vec2<f32>) -> vec2<f32> {
    return ((uv + 1.0) * size - 1.0) * 0.5;
}

fn tap(texel: vec2<i32>, size: vec2<i32>) -> vec3<f32> {
    let inside = all(texel >= vec2<i32>(0)) && all(texel < size);
    // Out-of-range loads are implementation-defined, so the load itself stays inside.
    let value = textureLoad(source_texture, clamp(texel, vec2<i32>(0), size - 1), 0).rgb;
    return select(vec3<f32>(0.0), value, inside);
}

fn warp_manual(uv: vec2<f32>) -> vec3<f32> {
    let size = vec2<i32>(textureDimensions(source_texture));
    // Far-away points read only zeros either way; the clamp keeps the i32 conversion exact.
    let p = clamp(texel_position(uv, vec2<f32>(size)), vec2<f32>(-2.0), vec2<f32>(size) + 1.0);
    let corner = floor(p);
    let f = p - corner;
    let i = vec2<i32>(corner);
    let row0 = mix(tap(i, size), tap(i + vec2<i32>(1, 0), size), f.x);
    let row1 = mix(tap(i + vec2<i32>(0, 1), size), tap(i + vec2<i32>(1, 1), size), f.x);
    return mix(row0, row1, f.y);
}

fn warp_hardware(uv: vec2<f32>) -> vec3<f32> {
    let size = vec2<f32>(textureDimensions(source_texture));
    // Zero padding. WebGPU samplers have no border colour, and a copy of the texture with a ring
    // of zeros costs a pass and changes the texture coordinates. Instead the sampler clamps to
    // the edge and the result is scaled by the part of the bilinear footprint that lies inside
    // the texture: up to one texel beyond an edge grid_sample blends the edge texel with zero,
    // which is the clamped value times that part; further out the part is zero.
    let p = texel_position(uv, size);
    let zero = vec2<f32>(0.0);
    let one = vec2<f32>(1.0);
    let inside = clamp(p + 1.0, zero, one) * clamp(size - p, zero, one);
    let value = textureSampleLevel(source_texture, bilinear, (uv + 1.0) * 0.5, 0.0).rgb;
    return value * (inside.x * inside.y);
}

@fragment
fn fs_manual(@builtin(position) position: vec4<f32>) -> @location(0) vec4<f32> {
    let pixel = vec2<i32>(position.xy);
    let uv = textureLoad(uv_grid, pixel, 0).xy;
    return vec4<f32>(textureLoad(lowfreq, pixel, 0).rgb + warp_manual(uv), 1.0);
}

@fragment
fn fs_hardware(@builtin(position) position: vec4<f32>) -> @location(0) vec4<f32> {
    let pixel = vec2<i32>(position.xy);
    let uv = textureLoad(uv_grid, pixel, 0).xy;
    return vec4<f32>(textureLoad(lowfreq, pixel, 0).rgb + warp_hardware(uv), 1.0);
}
