//! The GL side (`--gl`): an OpenGL ES 3 context on EGL's surfaceless
//! platform (Mesa picks the render node: virgl in a guest with a 3D
//! virtio-gpu, llvmpipe on a plain host), drawing into a renderbuffer that
//! is read back and checked pixel by pixel.
//!
//! libEGL.so.1 and libGLESv2.so.2 (libglvnd) are opened at run time.

use std::ffi::{c_char, c_void, CStr, CString};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use libloading::Library;

type EglDisplay = *mut c_void;
type EglConfig = *mut c_void;
type EglContext = *mut c_void;
type EglSurface = *mut c_void;
type EglInt = i32;
type GlEnum = u32;
type GlUint = u32;
type GlInt = i32;

const EGL_NONE: EglInt = 0x3038;
const EGL_PLATFORM_SURFACELESS_MESA: u32 = 0x31DD;
const EGL_PLATFORM_GBM_KHR: u32 = 0x31D7;
const EGL_WINDOW_BIT: EglInt = 0x0004;
const EGL_NATIVE_VISUAL_ID: EglInt = 0x302E;
const EGL_RENDERABLE_TYPE: EglInt = 0x3040;
const EGL_SURFACE_TYPE: EglInt = 0x3033;
const EGL_OPENGL_ES3_BIT: EglInt = 0x0040;
const EGL_OPENGL_ES_API: u32 = 0x30A0;
const EGL_CONTEXT_MAJOR_VERSION: EglInt = 0x3098;
const EGL_VENDOR: EglInt = 0x3053;

const GL_VENDOR: GlEnum = 0x1F00;
const GL_RENDERER: GlEnum = 0x1F01;
const GL_VERSION: GlEnum = 0x1F02;
const GL_FRAMEBUFFER: GlEnum = 0x8D40;
const GL_RENDERBUFFER: GlEnum = 0x8D41;
const GL_RGBA8: GlEnum = 0x8058;
const GL_COLOR_ATTACHMENT0: GlEnum = 0x8CE0;
const GL_FRAMEBUFFER_COMPLETE: GlEnum = 0x8CD5;
const GL_COLOR_BUFFER_BIT: u32 = 0x4000;
const GL_SCISSOR_TEST: GlEnum = 0x0C11;
const GL_RGBA: GlEnum = 0x1908;
const GL_UNSIGNED_BYTE: GlEnum = 0x1401;
const GL_VERTEX_SHADER: GlEnum = 0x8B31;
const GL_FRAGMENT_SHADER: GlEnum = 0x8B30;
const GL_COMPILE_STATUS: GlEnum = 0x8B81;
const GL_LINK_STATUS: GlEnum = 0x8B82;
const GL_TRIANGLES: GlEnum = 0x0004;

/// A full-viewport triangle from gl_VertexID alone.
const VERTEX: &str = "#version 300 es
void main() {
    vec2 p = vec2(float((gl_VertexID & 1) << 2) - 1.0, float((gl_VertexID & 2) << 1) - 1.0);
    gl_Position = vec4(p, 0.0, 1.0);
}
";
/// Each pixel's colour says where it is: (x, y, 255, 255).
const FRAGMENT: &str = "#version 300 es
precision highp float;
out vec4 color;
void main() {
    color = vec4(floor(gl_FragCoord.x) / 255.0, floor(gl_FragCoord.y) / 255.0, 1.0, 1.0);
}
";

/// The background clear colour and the scissored clear's colour.
pub const BACKGROUND: [u8; 4] = [51, 102, 153, 255];
pub const CORNER: [u8; 4] = [255, 0, 0, 255];
/// The corner cleared red: x, y < CORNER_SIZE.
const CORNER_SIZE: i32 = 16;

macro_rules! functions {
    ($name:ident { $($f:ident: fn($($a:ty),*) $(-> $r:ty)?;)* }) => {
        #[allow(non_snake_case)]
        struct $name { $($f: unsafe extern "C" fn($($a),*) $(-> $r)?,)* }
        impl $name {
            fn load(lib: &Library) -> Result<Self> {
                Ok(Self { $($f: {
                    // SAFETY: the symbol has this C signature (EGL 1.5 / GLES 3.0).
                    let s = unsafe { lib.get::<unsafe extern "C" fn($($a),*) $(-> $r)?>(
                        concat!(stringify!($f), "\0").as_bytes()) }
                        .context(concat!("missing ", stringify!($f)))?;
                    *s
                },)* })
            }
        }
    };
}

functions!(Egl {
    eglGetPlatformDisplay: fn(u32, *mut c_void, *const isize) -> EglDisplay;
    eglInitialize: fn(EglDisplay, *mut EglInt, *mut EglInt) -> u32;
    eglQueryString: fn(EglDisplay, EglInt) -> *const c_char;
    eglBindAPI: fn(u32) -> u32;
    eglChooseConfig: fn(EglDisplay, *const EglInt, *mut EglConfig, EglInt, *mut EglInt) -> u32;
    eglCreateContext: fn(EglDisplay, EglConfig, EglContext, *const EglInt) -> EglContext;
    eglMakeCurrent: fn(EglDisplay, *mut c_void, *mut c_void, EglContext) -> u32;
    eglDestroyContext: fn(EglDisplay, EglContext) -> u32;
    eglTerminate: fn(EglDisplay) -> u32;
    eglGetError: fn() -> EglInt;
    eglGetConfigAttrib: fn(EglDisplay, EglConfig, EglInt, *mut EglInt) -> u32;
    eglCreatePlatformWindowSurface: fn(EglDisplay, EglConfig, *mut c_void, *const isize) -> EglSurface;
    eglDestroySurface: fn(EglDisplay, EglSurface) -> u32;
    eglSwapBuffers: fn(EglDisplay, EglSurface) -> u32;
});

functions!(Gles {
    glGetString: fn(GlEnum) -> *const u8;
    glGetError: fn() -> GlEnum;
    glGenFramebuffers: fn(i32, *mut GlUint);
    glBindFramebuffer: fn(GlEnum, GlUint);
    glGenRenderbuffers: fn(i32, *mut GlUint);
    glBindRenderbuffer: fn(GlEnum, GlUint);
    glRenderbufferStorage: fn(GlEnum, GlEnum, i32, i32);
    glFramebufferRenderbuffer: fn(GlEnum, GlEnum, GlEnum, GlUint);
    glCheckFramebufferStatus: fn(GlEnum) -> GlEnum;
    glViewport: fn(i32, i32, i32, i32);
    glClearColor: fn(f32, f32, f32, f32);
    glClear: fn(u32);
    glEnable: fn(GlEnum);
    glDisable: fn(GlEnum);
    glScissor: fn(i32, i32, i32, i32);
    glReadPixels: fn(i32, i32, i32, i32, GlEnum, GlEnum, *mut c_void);
    glCreateShader: fn(GlEnum) -> GlUint;
    glShaderSource: fn(GlUint, i32, *const *const c_char, *const i32);
    glCompileShader: fn(GlUint);
    glGetShaderiv: fn(GlUint, GlEnum, *mut GlInt);
    glGetShaderInfoLog: fn(GlUint, i32, *mut i32, *mut c_char);
    glCreateProgram: fn() -> GlUint;
    glAttachShader: fn(GlUint, GlUint);
    glLinkProgram: fn(GlUint);
    glGetProgramiv: fn(GlUint, GlEnum, *mut GlInt);
    glUseProgram: fn(GlUint);
    glDrawArrays: fn(GlEnum, i32, i32);
});

/// Where a [`Gl`] draws.
pub enum Platform {
    /// EGL's surfaceless platform: no surface, draw into renderbuffers.
    Surfaceless,
    /// A GBM device with a window surface of that device (a `gbm_surface`
    /// whose buffers have the DRM format `format`).
    Gbm {
        device: *mut c_void,
        surface: *mut c_void,
        format: u32,
    },
}

/// An EGL display with a current GLES 3 context (and a window surface on
/// the GBM platform).
pub struct Gl {
    egl: Egl,
    gl: Gles,
    display: EglDisplay,
    context: EglContext,
    surface: EglSurface,
    program: GlUint,
    pub vendor: String,
    pub renderer: String,
    pub version: String,
    pub egl_vendor: String,
    _libs: (Library, Library),
}

fn c_string(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: EGL and GL return NUL-terminated static strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl Gl {
    /// A surfaceless context.
    pub fn new() -> Result<Self> {
        Self::open(Platform::Surfaceless)
    }

    pub fn open(platform: Platform) -> Result<Self> {
        // SAFETY: loading libglvnd runs its initializers; nothing else in
        // this process uses EGL or GL.
        let (egl_lib, gl_lib) = unsafe {
            (
                Library::new("libEGL.so.1").context("cannot load libEGL.so.1")?,
                Library::new("libGLESv2.so.2").context("cannot load libGLESv2.so.2")?,
            )
        };
        let egl = Egl::load(&egl_lib)?;
        let gl = Gles::load(&gl_lib)?;
        let (kind, native) = match platform {
            Platform::Surfaceless => (EGL_PLATFORM_SURFACELESS_MESA, std::ptr::null_mut()),
            Platform::Gbm { device, .. } => (EGL_PLATFORM_GBM_KHR, device),
        };
        // SAFETY: EGL calls with valid arguments (a GBM device the caller
        // keeps alive); the display, surface and context are released in
        // Drop (or below on failure).
        unsafe {
            let display = (egl.eglGetPlatformDisplay)(kind, native, std::ptr::null());
            if display.is_null() {
                bail!(
                    "no EGL display for platform {kind:#x} (error {:#x})",
                    (egl.eglGetError)()
                );
            }
            let (mut major, mut minor) = (0, 0);
            if (egl.eglInitialize)(display, &mut major, &mut minor) == 0 {
                bail!("eglInitialize failed (error {:#x})", (egl.eglGetError)());
            }
            let egl_vendor = c_string((egl.eglQueryString)(display, EGL_VENDOR));
            (egl.eglBindAPI)(EGL_OPENGL_ES_API);
            // Surfaceless: no surface type (the default, a window, has no
            // surfaceless config). GBM: a window config whose native visual
            // is the surface's format.
            let surface_type = match platform {
                Platform::Surfaceless => 0,
                Platform::Gbm { .. } => EGL_WINDOW_BIT,
            };
            let attrs = [
                EGL_RENDERABLE_TYPE,
                EGL_OPENGL_ES3_BIT,
                EGL_SURFACE_TYPE,
                surface_type,
                EGL_NONE,
            ];
            let mut configs: [EglConfig; 64] = [std::ptr::null_mut(); 64];
            let mut n = 0;
            if (egl.eglChooseConfig)(display, attrs.as_ptr(), configs.as_mut_ptr(), 64, &mut n) == 0
                || n < 1
            {
                (egl.eglTerminate)(display);
                bail!("no EGL config for OpenGL ES 3");
            }
            let configs = &configs[..n as usize];
            let config = match platform {
                Platform::Surfaceless => Some(configs[0]),
                Platform::Gbm { format, .. } => configs.iter().copied().find(|&c| {
                    let mut id = 0;
                    (egl.eglGetConfigAttrib)(display, c, EGL_NATIVE_VISUAL_ID, &mut id) != 0
                        && id as u32 == format
                }),
            };
            let Some(config) = config else {
                (egl.eglTerminate)(display);
                bail!("no EGL config for the GBM surface's format");
            };
            let ctx_attrs = [EGL_CONTEXT_MAJOR_VERSION, 3, EGL_NONE];
            let context =
                (egl.eglCreateContext)(display, config, std::ptr::null_mut(), ctx_attrs.as_ptr());
            if context.is_null() {
                let err = (egl.eglGetError)();
                (egl.eglTerminate)(display);
                bail!("eglCreateContext failed (error {err:#x})");
            }
            let surface = match platform {
                Platform::Surfaceless => std::ptr::null_mut(),
                Platform::Gbm { surface, .. } => {
                    let s = (egl.eglCreatePlatformWindowSurface)(
                        display,
                        config,
                        surface,
                        std::ptr::null(),
                    );
                    if s.is_null() {
                        let err = (egl.eglGetError)();
                        (egl.eglDestroyContext)(display, context);
                        (egl.eglTerminate)(display);
                        bail!("eglCreatePlatformWindowSurface failed (error {err:#x})");
                    }
                    s
                }
            };
            if (egl.eglMakeCurrent)(display, surface, surface, context) == 0 {
                let err = (egl.eglGetError)();
                if !surface.is_null() {
                    (egl.eglDestroySurface)(display, surface);
                }
                (egl.eglDestroyContext)(display, context);
                (egl.eglTerminate)(display);
                bail!("eglMakeCurrent failed (error {err:#x})");
            }
            let s = |e| c_string((gl.glGetString)(e).cast());
            let mut me = Gl {
                vendor: s(GL_VENDOR),
                renderer: s(GL_RENDERER),
                version: s(GL_VERSION),
                egl_vendor,
                egl,
                gl,
                display,
                context,
                surface,
                program: 0,
                _libs: (egl_lib, gl_lib),
            };
            me.program = me.build_program()?;
            Ok(me)
        }
    }

    fn shader(&self, kind: GlEnum, src: &str) -> Result<GlUint> {
        let g = &self.gl;
        let src = CString::new(src).context("shader source")?;
        // SAFETY: a current context; the source pointer lives for the call.
        unsafe {
            let s = (g.glCreateShader)(kind);
            let p = src.as_ptr();
            (g.glShaderSource)(s, 1, &p, std::ptr::null());
            (g.glCompileShader)(s);
            let mut ok = 0;
            (g.glGetShaderiv)(s, GL_COMPILE_STATUS, &mut ok);
            if ok == 0 {
                let mut log = vec![0 as c_char; 1024];
                (g.glGetShaderInfoLog)(s, 1024, std::ptr::null_mut(), log.as_mut_ptr());
                bail!("shader does not compile: {}", c_string(log.as_ptr()));
            }
            Ok(s)
        }
    }

    fn build_program(&self) -> Result<GlUint> {
        let vs = self.shader(GL_VERTEX_SHADER, VERTEX)?;
        let fs = self.shader(GL_FRAGMENT_SHADER, FRAGMENT)?;
        let g = &self.gl;
        // SAFETY: a current context; the shaders were just compiled.
        unsafe {
            let p = (g.glCreateProgram)();
            (g.glAttachShader)(p, vs);
            (g.glAttachShader)(p, fs);
            (g.glLinkProgram)(p);
            let mut ok = 0;
            (g.glGetProgramiv)(p, GL_LINK_STATUS, &mut ok);
            if ok == 0 {
                bail!("the program does not link");
            }
            Ok(p)
        }
    }

    /// A `size` x `size` RGBA8 renderbuffer bound as the framebuffer.
    fn target(&self, size: i32) -> Result<()> {
        let g = &self.gl;
        // SAFETY: a current context; out-pointers to locals.
        unsafe {
            let (mut fb, mut rb) = (0, 0);
            (g.glGenFramebuffers)(1, &mut fb);
            (g.glBindFramebuffer)(GL_FRAMEBUFFER, fb);
            (g.glGenRenderbuffers)(1, &mut rb);
            (g.glBindRenderbuffer)(GL_RENDERBUFFER, rb);
            (g.glRenderbufferStorage)(GL_RENDERBUFFER, GL_RGBA8, size, size);
            (g.glFramebufferRenderbuffer)(
                GL_FRAMEBUFFER,
                GL_COLOR_ATTACHMENT0,
                GL_RENDERBUFFER,
                rb,
            );
            let status = (g.glCheckFramebufferStatus)(GL_FRAMEBUFFER);
            if status != GL_FRAMEBUFFER_COMPLETE {
                bail!("framebuffer incomplete ({status:#x})");
            }
            (g.glViewport)(0, 0, size, size);
        }
        Ok(())
    }

    /// Clears, clears the corner red, draws the coordinate gradient over
    /// the right half, and reads the pixels back (bottom row first), on a
    /// framebuffer of `width` x `height`.
    fn draw(&self, width: i32, height: i32, pixels: &mut Vec<u8>) -> Result<()> {
        let g = &self.gl;
        pixels.resize((width * height * 4) as usize, 0);
        // SAFETY: a current context with a complete framebuffer of
        // width x height; `pixels` holds width*height RGBA8 pixels.
        unsafe {
            (g.glDisable)(GL_SCISSOR_TEST);
            let c = BACKGROUND.map(|v| f32::from(v) / 255.0);
            (g.glClearColor)(c[0], c[1], c[2], c[3]);
            (g.glClear)(GL_COLOR_BUFFER_BIT);
            (g.glEnable)(GL_SCISSOR_TEST);
            (g.glScissor)(0, 0, CORNER_SIZE, CORNER_SIZE);
            (g.glClearColor)(1.0, 0.0, 0.0, 1.0);
            (g.glClear)(GL_COLOR_BUFFER_BIT);
            (g.glScissor)(width / 2, 0, width - width / 2, height);
            (g.glUseProgram)(self.program);
            (g.glDrawArrays)(GL_TRIANGLES, 0, 3);
            (g.glReadPixels)(
                0,
                0,
                width,
                height,
                GL_RGBA,
                GL_UNSIGNED_BYTE,
                pixels.as_mut_ptr().cast(),
            );
            let err = (g.glGetError)();
            if err != 0 {
                bail!("GL error {err:#x}");
            }
        }
        Ok(())
    }

    /// Draws a `size` x `size` picture and checks every pixel; the first
    /// wrong one as a message.
    pub fn check(&self, size: i32) -> Result<Option<String>> {
        self.target(size)?;
        let mut pixels = Vec::new();
        self.draw(size, size, &mut pixels)?;
        Ok(first_wrong_pixel(&pixels, size, size))
    }

    /// Draws the picture on the window surface (`width` x `height`),
    /// checks it, and presents it (eglSwapBuffers).
    pub fn draw_and_swap(&self, width: i32, height: i32) -> Result<Option<String>> {
        if self.surface.is_null() {
            bail!("no window surface");
        }
        let g = &self.gl;
        // SAFETY: a current context; framebuffer 0 is the window surface.
        unsafe {
            (g.glBindFramebuffer)(GL_FRAMEBUFFER, 0);
            (g.glViewport)(0, 0, width, height);
        }
        let mut pixels = Vec::new();
        self.draw(width, height, &mut pixels)?;
        let bad = first_wrong_pixel(&pixels, width, height);
        // SAFETY: the display and surface are this Gl's.
        if unsafe { (self.egl.eglSwapBuffers)(self.display, self.surface) } == 0 {
            // SAFETY: plain query.
            bail!("eglSwapBuffers failed (error {:#x})", unsafe {
                (self.egl.eglGetError)()
            });
        }
        Ok(bad)
    }

    /// Median time of draw + read back of a `size` x `size` picture.
    pub fn bench(&self, size: i32, iters: u32) -> Result<Duration> {
        self.target(size)?;
        let mut pixels = Vec::new();
        let mut times = Vec::new();
        for n in 0..=iters {
            let start = Instant::now();
            self.draw(size, size, &mut pixels)?;
            if n > 0 {
                times.push(start.elapsed());
            }
        }
        if let Some(bad) = first_wrong_pixel(&pixels, size, size) {
            bail!("wrong picture while benchmarking: {bad}");
        }
        times.sort();
        Ok(times[times.len() / 2])
    }
}

impl Drop for Gl {
    fn drop(&mut self) {
        // SAFETY: the display and context were created by this Gl.
        unsafe {
            (self.egl.eglMakeCurrent)(
                self.display,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            if !self.surface.is_null() {
                (self.egl.eglDestroySurface)(self.display, self.surface);
            }
            (self.egl.eglDestroyContext)(self.display, self.context);
            (self.egl.eglTerminate)(self.display);
        }
    }
}

/// The colour pixel (x, y) (y from the bottom) of a picture `width` wide
/// must have.
pub fn expected_pixel(x: i32, y: i32, width: i32) -> [u8; 4] {
    if x >= width / 2 {
        [x.min(255) as u8, y.min(255) as u8, 255, 255]
    } else if x < CORNER_SIZE && y < CORNER_SIZE {
        CORNER
    } else {
        BACKGROUND
    }
}

fn first_wrong_pixel(pixels: &[u8], width: i32, height: i32) -> Option<String> {
    for y in 0..height {
        for x in 0..width {
            let at = ((y * width + x) * 4) as usize;
            let got = &pixels[at..at + 4];
            let want = expected_pixel(x, y, width);
            if got.iter().zip(want).any(|(&g, w)| g.abs_diff(w) > 1) {
                return Some(format!("pixel ({x}, {y}): got {got:?}, want {want:?}"));
            }
        }
    }
    None
}
