"""The split variant's last step, lowfreq + warp(texture, uv), on the GPU and in numpy.

The split variant of the frame graph stops before the warp and hands the app three tensors: the
texture [1, 3, Ht, Wt], the sampling grid uv [1, H, W, 2] and the low-frequency image lowfreq
[1, 3, H, W] (the mask passes through untouched). The app's GPU finishes the frame with one
fullscreen pass, the compositing shader (export/shaders/composite.frag for GLSL ES 3.00,
composite.wgsl for WebGPU): image = lowfreq + grid_sample(texture, uv), bilinear, zero padding,
align_corners=False. `GpuCompositor` runs those shaders here (OpenGL through EGL with moderngl,
WebGPU with wgpu-native, both in a worker process of their own), and `composite_numpy` is the
exact result they are measured against.

Conventions. uv holds (x, y) in [-1, 1], -1 and +1 being the outer edges of the first and last
texel: the sample point of output pixel (i, j) is x = ((uv[i, j, 0] + 1) * Wt - 1) / 2 texels
(y alike), texel centres on integers, and texels outside the texture are zero. Tensors are
uploaded first row first and read back the same way, so row 0 stays row 0 in every API (in GL
the texture's t = 0 and the framebuffer's y = 0 are then both the tensors' row 0).

Two sampling modes per shader. "manual" fetches the four neighbours and blends them in fp32:
grid_sample up to fp32 round-off. "hardware" makes one bilinear fetch at texture coordinate
(uv + 1) / 2 (texel centres at (i + 0.5) / Wt, which is align_corners=False) and so uses the
sampler's own weights. Phone and desktop GPUs compute the sub-texel position in fixed point,
commonly with 8 fractional bits, which moves each weight by up to 1/512 (1/256 if they
truncate); `composite_numpy(..., subtexel_bits=8)` predicts that. Mesa's llvmpipe and lavapipe,
the devices here without a GPU, filter float textures with fp32 weights, so on them both modes
agree to round-off. float32 textures are filterable only with OES_texture_float_linear (GLES)
or the "float32-filterable" feature (WebGPU); without it the hardware mode samples an RGBA16F
copy. Neither API's portable subset has a zero border colour, so both shaders clamp to the edge
and scale by the part of the footprint inside the texture, which is exact zero padding.
Measured figures: docs/gpu.md ("The split variant").
"""
from __future__ import annotations

import functools
import re

import numpy as np

from ..reference.errors import InputError
from .runner import RuntimeUnavailable

MODES = ("manual", "hardware")
KINDS = ("glsl", "wgsl")

# Defined right after the #version line to compile composite.frag in hardware mode.
GLSL_HARDWARE_DEFINE = "#define COMPOSITE_HARDWARE_FILTERING 1"
# The fragment shader reads only gl_FragCoord, so one triangle that covers the target is enough.
_GLSL_VERTEX = """#version 300 es
void main() {
    gl_Position = vec4(gl_VertexID == 1 ? 3.0 : -1.0, gl_VertexID == 2 ? 3.0 : -1.0, 0.0, 1.0);
}
"""
_VULKAN_ADVICE = ("on a machine without a GPU install Mesa's software Vulkan driver, lavapipe "
                  "(mesa-vulkan-drivers >= 25 from bookworm-backports: `make setup` as root, or "
                  "sh scripts/install-vulkan-driver.sh)")


class CompositorUnavailable(RuntimeUnavailable):
    """No GPU context or adapter to run a compositing shader on; the message names what is
    missing and how to install it. A `RuntimeUnavailable` (so a `BilayerError`), like a runtime
    a bundle names that this machine lacks."""


def _as_array(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _checked(lowfreq, texture, uv) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lowfreq, texture, uv = _as_array(lowfreq), _as_array(texture), _as_array(uv)
    if texture.ndim != 4 or texture.shape[:2] != (1, 3):
        raise InputError(f"texture has shape {texture.shape}, the compositor expects [1, 3, Ht, Wt]")
    if uv.ndim != 4 or uv.shape[0] != 1 or uv.shape[3] != 2:
        raise InputError(f"uv has shape {uv.shape}, the compositor expects [1, H, W, 2] (grid_sample's grid)")
    if lowfreq.shape != (1, 3) + uv.shape[1:3]:
        raise InputError(f"lowfreq has shape {lowfreq.shape}, the compositor expects [1, 3, H, W] = "
                         f"{[1, 3, *uv.shape[1:3]]} (the size of uv)")
    return lowfreq, texture, uv


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; the modes are {', '.join(MODES)}")


def composite_numpy(lowfreq, texture, uv, subtexel_bits: int | None = None) -> np.ndarray:
    """lowfreq + grid_sample(texture, uv) (bilinear, zeros, align_corners=False), blended in
    float64: the image the compositing shaders approximate, as a float64 [1, 3, H, W] array.
    The sample position is formed in float32, (uv + 1) * Wt / 2 - 1/2, as torch's float32 kernel
    and both shaders form it; sample points that are not finite read zeros. `subtexel_bits` n
    then rounds every position to 1/2^n texel, as a bilinear sampler with n fractional bits does
    (8 on most GPUs): a prediction of the hardware mode on such a device (pass
    texture.astype(np.float16) too for one that samples a half-float copy)."""
    lowfreq, texture, uv = _checked(lowfreq, texture, uv)
    _, channels, height, width = texture.shape
    # A ring of zero texels around the texture: every tap index clipped to [-1, size] then reads
    # either a real texel or a zero, which is grid_sample's zero padding without masks.
    padded = np.zeros((channels, height + 2, width + 2))
    padded[:, 1:-1, 1:-1] = texture[0]
    # Rounding uv + 1 to float32 moves a sample by up to 2^-25 * Wt texels (8e-6 at 256), which
    # at a sharp edge of a photo changes the value by over 1e-5, far more than the blend's own
    # round-off: every float32 implementation has that step, so the reference has it too.
    # Points beyond +-3 read only zeros; clipping them there keeps the arithmetic finite.
    grid = np.clip(np.where(np.isfinite(uv[0]), uv[0], -3.0), -3.0, 3.0).astype(np.float32)
    x = ((grid[..., 0] + np.float32(1)) * np.float32(width / 2) - np.float32(0.5)).astype(np.float64)
    y = ((grid[..., 1] + np.float32(1)) * np.float32(height / 2) - np.float32(0.5)).astype(np.float64)
    if subtexel_bits is not None:
        steps = 2.0 ** subtexel_bits
        x, y = np.round(x * steps) / steps, np.round(y * steps) / steps
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    image = lowfreq[0].astype(np.float64)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        rows = np.clip(y0 + dy, -1, height).astype(np.int64) + 1
        for dx, wx in ((0, 1 - fx), (1, fx)):
            cols = np.clip(x0 + dx, -1, width).astype(np.int64) + 1
            image = image + wy * wx * padded[:, rows, cols]
    return image[None]


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())  # wgpu-native's errors span lines; the CLI prints one


def _rgba(chw: np.ndarray, dtype) -> np.ndarray:
    """[1, 3, H, W] -> [H, W, 4] C-contiguous texel data, alpha 1 (the shaders ignore it)."""
    _, _, height, width = chw.shape
    texels = np.ones((height, width, 4), dtype)
    texels[..., :3] = np.moveaxis(chw[0], 0, -1)
    return texels


def _image(rgba: bytes | memoryview, height: int, width: int) -> np.ndarray:
    texels = np.frombuffer(rgba, np.float32).reshape(height, width, 4)
    return np.ascontiguousarray(np.moveaxis(texels[..., :3], -1, 0)[None])


# --- in the worker process: OpenGL (GLSL ES 3.00 through a desktop context) ---

@functools.cache
def _gl_context():
    try:
        import moderngl
    except ImportError as error:
        raise CompositorUnavailable("the GLSL compositor needs moderngl: pip install -c requirements/lock.txt "
                                    "moderngl (part of make setup)") from error
    try:
        context = moderngl.create_standalone_context(backend="egl")
    except Exception as error:
        raise CompositorUnavailable(f"no OpenGL context through EGL ({_one_line(error)}): install Mesa's EGL and OpenGL "
                                    "drivers (apt-get install libegl1 libgl1-mesa-dri), or a GPU driver with "
                                    "EGL") from error
    # glcontext creates desktop contexts only; these compile `#version 300 es` shaders as they are
    # when they implement ARB_ES3_compatibility (core in GL 4.3), so no translation is needed.
    if context.version_code < 430 and "GL_ARB_ES3_compatibility" not in context.extensions:
        renderer, version = context.info["GL_RENDERER"], context.version_code
        context.release()
        raise CompositorUnavailable(f"the OpenGL driver ({renderer}, GL {version}) cannot compile "
                                    "GLSL ES 3.00 shaders: it needs OpenGL 4.3 or GL_ARB_ES3_compatibility "
                                    "(Mesa's llvmpipe has both: apt-get install libgl1-mesa-dri)")
    return context


def _gl_source(shader_source: str, mode: str) -> str:
    if mode == "manual":
        return shader_source
    version = re.search(r"^[ \t]*#version[^\n]*\n", shader_source, re.MULTILINE)
    if version is None:
        raise ValueError("the GLSL shader has no #version line to put the hardware-mode #define after")
    return shader_source[:version.end()] + GLSL_HARDWARE_DEFINE + "\n" + shader_source[version.end():]


def _composite_glsl(shader_source: str, lowfreq, texture, uv, mode: str) -> np.ndarray:
    """GpuCompositor.composite("glsl", ...) in the worker."""
    context = _gl_context()
    # Other GL users in the process leave their own context current (wgpu-native's adapter
    # request unbinds ours): make this one current for the pass and restore theirs after.
    with context:
        created = []
        try:
            return _gl_draw(context, created, _gl_source(shader_source, mode), lowfreq, texture, uv, mode)
        finally:
            for resource in reversed(created):
                resource.release()


def _gl_draw(context, created: list, fragment_shader: str, lowfreq, texture, uv, mode: str) -> np.ndarray:
    import moderngl

    def sampled(data: np.ndarray, components: int, filtering: int):
        rows, cols = data.shape[:2]
        tex = context.texture((cols, rows), components, np.ascontiguousarray(data, np.float32).tobytes(), dtype="f4")
        created.append(tex)
        tex.filter = (filtering, filtering)
        tex.repeat_x = tex.repeat_y = False  # CLAMP_TO_EDGE
        return tex

    height, width = uv.shape[1:3]
    program = context.program(vertex_shader=_GLSL_VERTEX, fragment_shader=fragment_shader)
    created.append(program)
    inputs = {"u_texture": sampled(_rgba(texture, np.float32), 4,
                                   moderngl.LINEAR if mode == "hardware" else moderngl.NEAREST),
              "u_uv": sampled(uv[0], 2, moderngl.NEAREST),
              "u_lowfreq": sampled(_rgba(lowfreq, np.float32), 4, moderngl.NEAREST)}
    for unit, (name, tex) in enumerate(inputs.items()):
        tex.use(location=unit)
        if name in program:  # a compiler may drop a sampler the mode does not read
            program[name].value = unit
    target = context.texture((width, height), 4, dtype="f4")
    created.append(target)
    framebuffer = context.framebuffer(color_attachments=[target])
    created.append(framebuffer)
    framebuffer.use()
    vertex_array = context.vertex_array(program, [])
    created.append(vertex_array)
    vertex_array.render(moderngl.TRIANGLES, vertices=3)
    return _image(framebuffer.read(components=4, dtype="f4"), height, width)


# --- in the worker process: WebGPU (WGSL through wgpu-native) ---

@functools.cache
def _wgpu_device(float32_filterable: bool):
    try:
        import wgpu
    except ImportError as error:
        raise CompositorUnavailable("the WGSL compositor needs wgpu: pip install -c requirements/lock.txt wgpu "
                                    "(part of make setup)") from error
    try:
        adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    except Exception as error:
        raise CompositorUnavailable(f"no WebGPU adapter ({_one_line(error)}): {_VULKAN_ADVICE}") from error
    if adapter is None:
        raise CompositorUnavailable(f"no WebGPU adapter (wgpu-native found no Vulkan device): {_VULKAN_ADVICE}")
    # wgpu-native's OpenGL backend is its fallback when Vulkan is missing; it is not a complete
    # WebGPU (it cannot render to rgba32float), so results there would say nothing about WebGPU.
    if adapter.info["backend_type"] == "OpenGL":
        raise CompositorUnavailable(f"wgpu-native found only its OpenGL fallback ({adapter.info['device']}), "
                                    f"not a WebGPU adapter: {_VULKAN_ADVICE}")
    features = ["float32-filterable"] if float32_filterable and "float32-filterable" in adapter.features else []
    try:
        device = adapter.request_device_sync(required_features=features)
    except Exception as error:
        raise CompositorUnavailable(f"the WebGPU adapter {adapter.info['device']} gave no device ({_one_line(error)}): "
                                    f"{_VULKAN_ADVICE}") from error
    return adapter, device


def _wgsl_hardware_format(device) -> str:
    return "rgba32float" if "float32-filterable" in device.features else "rgba16float"


def _composite_wgsl(shader_source: str, lowfreq, texture, uv, mode: str, float32_filterable: bool) -> np.ndarray:
    """GpuCompositor.composite("wgsl", ...) in the worker."""
    _, device = _wgpu_device(float32_filterable)
    import wgpu

    height, width = uv.shape[1:3]
    hardware = mode == "hardware"
    fragment = wgpu.ShaderStage.FRAGMENT

    def sampled(data: np.ndarray, format: str):
        rows, cols = data.shape[:2]
        tex = device.create_texture(size=(cols, rows, 1), format=format,
                                    usage=wgpu.TextureUsage.TEXTURE_BINDING | wgpu.TextureUsage.COPY_DST)
        data = np.ascontiguousarray(data)
        device.queue.write_texture({"texture": tex}, data, {"bytes_per_row": data.strides[0], "rows_per_image": rows},
                                   (cols, rows, 1))
        return tex.create_view()

    def texture_entry(binding: int, sample_type: str) -> dict:
        return {"binding": binding, "visibility": fragment,
                "texture": {"sample_type": sample_type, "view_dimension": "2d"}}

    source_format = _wgsl_hardware_format(device) if hardware else "rgba32float"
    source_dtype = np.float16 if source_format == "rgba16float" else np.float32
    views = [sampled(_rgba(texture, source_dtype), source_format),
             sampled(np.asarray(uv[0], np.float32), "rg32float"),
             sampled(_rgba(lowfreq, np.float32), "rgba32float")]
    layout_entries = [texture_entry(0, "float" if hardware else "unfilterable-float"),
                      texture_entry(1, "unfilterable-float"), texture_entry(2, "unfilterable-float")]
    group_entries = [{"binding": i, "resource": view} for i, view in enumerate(views)]
    if hardware:
        layout_entries.append({"binding": 3, "visibility": fragment, "sampler": {"type": "filtering"}})
        sampler = device.create_sampler(address_mode_u="clamp-to-edge", address_mode_v="clamp-to-edge",
                                        mag_filter="linear", min_filter="linear", mipmap_filter="nearest")
        group_entries.append({"binding": 3, "resource": sampler})
    group_layout = device.create_bind_group_layout(entries=layout_entries)
    bind_group = device.create_bind_group(layout=group_layout, entries=group_entries)
    module = device.create_shader_module(code=shader_source)
    pipeline = device.create_render_pipeline(
        layout=device.create_pipeline_layout(bind_group_layouts=[group_layout]),
        vertex={"module": module, "entry_point": "vs_fullscreen", "buffers": []},
        primitive={"topology": "triangle-list"},
        fragment={"module": module, "entry_point": f"fs_{mode}", "targets": [{"format": "rgba32float"}]},
    )
    target = device.create_texture(size=(width, height, 1), format="rgba32float",
                                   usage=wgpu.TextureUsage.RENDER_ATTACHMENT | wgpu.TextureUsage.COPY_SRC)
    encoder = device.create_command_encoder()
    render = encoder.begin_render_pass(color_attachments=[{
        "view": target.create_view(), "load_op": "clear", "store_op": "store", "clear_value": (0, 0, 0, 0)}])
    render.set_pipeline(pipeline)
    render.set_bind_group(0, bind_group)
    render.draw(3)
    render.end()
    device.queue.submit([encoder.finish()])
    rgba = device.queue.read_texture({"texture": target}, {"bytes_per_row": width * 16, "rows_per_image": height},
                                     (width, height, 1))
    return _image(rgba, height, width)


class _WorkerSide:
    """What the worker process holds: the GL context and the WebGPU device, made when first used."""

    def __init__(self, float32_filterable: bool):
        self.float32_filterable = float32_filterable

    def composite(self, kind: str, shader_source: str, lowfreq, texture, uv, mode: str) -> np.ndarray:
        if kind == "glsl":
            return _composite_glsl(shader_source, lowfreq, texture, uv, mode)
        return _composite_wgsl(shader_source, lowfreq, texture, uv, mode, self.float32_filterable)

    def renderer_description(self, kind: str) -> str:
        if kind == "glsl":
            context = _gl_context()
            with context:
                info = context.info
            return f"{info['GL_RENDERER']}, OpenGL {info['GL_VERSION']}"
        info = _wgpu_device(self.float32_filterable)[0].info
        return f"{info['device']}, {info['backend_type']}, {info['description']}"

    def hardware_texture_format(self, kind: str) -> str:
        if kind == "glsl":
            _gl_context()
            return "RGBA32F"  # desktop OpenGL (3.0 and later) filters every float format
        return _wgsl_hardware_format(_wgpu_device(self.float32_filterable)[1])


# --- in this process ---

def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown shader kind {kind!r}; the kinds are {', '.join(KINDS)}")


class GpuCompositor:
    """The compositing shaders run on this machine's GPU, in a process of their own.

    with GpuCompositor() as gpu:
        image = gpu.composite("glsl", Path("composite.frag").read_text(), lowfreq, texture, uv, "manual")
        gpu.renderer_description("glsl")  # 'llvmpipe (LLVM 19.1.7, 256 bits), OpenGL 4.5 (Core Profile) Mesa 25.0.7'

    `composite(kind, ...)` runs a GLSL ES 3.00 shader (export/shaders/composite.frag, kind "glsl")
    once in an offscreen OpenGL context through EGL, or a WGSL one (composite.wgsl: vs_fullscreen
    and fs_manual / fs_hardware, kind "wgsl") with wgpu-native: the inputs uploaded as 32-bit
    float textures, one triangle drawn into an rgba32float target, the result read back as a
    float32 [1, 3, H, W] array. `mode` "manual" runs the shader's own bilinear blend; "hardware"
    binds a linear clamp-to-edge sampler (GLSL: the hardware-filtering #define; WGSL: fs_hardware
    on an rgba32float texture when the device filters it, else an rgba16float copy).
    `float32_filterable=False` asks WebGPU for a device without that feature, as most phones and
    browsers have. The drivers run in an `OwnProcess` worker (they crash a process that has loaded
    coremltools). Raises `CompositorUnavailable` when there is no OpenGL context or WebGPU adapter.
    """

    def __init__(self, float32_filterable: bool = True):
        from .own_process import OwnProcess

        self._worker = OwnProcess(_WorkerSide, float32_filterable, label="GPU compositor")

    def composite(self, kind: str, shader_source: str, lowfreq, texture, uv, mode: str) -> np.ndarray:
        """lowfreq + warp(texture, uv) by the shader `shader_source` of `kind` in `mode`."""
        _check_kind(kind)
        lowfreq, texture, uv = _checked(lowfreq, texture, uv)
        _check_mode(mode)
        return self._worker.call("composite", kind, shader_source, lowfreq, texture, uv, mode)

    def renderer_description(self, kind: str) -> str:
        """The device a compositor of `kind` runs on, for reports: GL_RENDERER and GL_VERSION of
        the EGL context, or the WebGPU adapter's device, backend and driver."""
        _check_kind(kind)
        return self._worker.call("renderer_description", kind)

    def hardware_texture_format(self, kind: str) -> str:
        """The texture format the hardware mode samples: the 32-bit float format where the device
        filters it, else the 16-bit one (GL names for "glsl", WebGPU names for "wgsl")."""
        _check_kind(kind)
        return self._worker.call("hardware_texture_format", kind)

    def close(self) -> None:
        """Stop the worker process."""
        self._worker.close()

    def __enter__(self) -> "GpuCompositor":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
