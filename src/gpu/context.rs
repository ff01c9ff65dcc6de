//! Adapter choice and device creation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Which adapters may be chosen. [`AdapterSelection::from_env`] reads the
/// variables wgpu's own tools honour: `WGPU_BACKEND` (a comma list such as
/// `vulkan`, `metal`, `dx12`, `gl`) and `WGPU_ADAPTER_NAME` (a
/// case-insensitive substring of the adapter's name).
#[derive(Clone, Debug)]
pub struct AdapterSelection {
    /// Backends to look at.
    pub backends: wgpu::Backends,
    /// Only adapters whose name contains this (case-insensitive).
    pub name: Option<String>,
}

impl Default for AdapterSelection {
    fn default() -> Self {
        AdapterSelection {
            backends: wgpu::Backends::all(),
            name: None,
        }
    }
}

impl AdapterSelection {
    /// From `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`; all backends and any name
    /// where they are unset.
    pub fn from_env() -> Self {
        AdapterSelection {
            backends: wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all()),
            name: std::env::var("WGPU_ADAPTER_NAME")
                .ok()
                .filter(|s| !s.is_empty()),
        }
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.backends != wgpu::Backends::all() {
            parts.push(format!("WGPU_BACKEND selects {:?}", self.backends));
        }
        if let Some(n) = &self.name {
            parts.push(format!("WGPU_ADAPTER_NAME = {n:?}"));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" (with {})", parts.join(", "))
        }
    }
}

/// One adapter as [`GpuContext::candidates`] sees it.
#[derive(Clone, Debug)]
pub struct AdapterCandidate {
    /// What the driver reports.
    pub info: wgpu::AdapterInfo,
    /// Its limits.
    pub limits: wgpu::Limits,
    /// Its features.
    pub features: wgpu::Features,
    /// Whether it can run compute shaders at all.
    pub compute: bool,
    /// Whether it passes the name filter.
    pub name_matches: bool,
    /// Lower is better: hardware before software, Vulkan/Metal before DX12 before GL.
    pub rank: (u8, u8),
}

impl AdapterCandidate {
    /// Whether this adapter may be chosen.
    pub fn eligible(&self) -> bool {
        self.compute && self.name_matches
    }

    /// Why it ranks where it does, in words.
    pub fn reason(&self) -> String {
        if !self.compute {
            return "cannot run compute shaders".into();
        }
        if !self.name_matches {
            return "name does not match WGPU_ADAPTER_NAME".into();
        }
        let kind = match self.info.device_type {
            wgpu::DeviceType::DiscreteGpu => "discrete GPU",
            wgpu::DeviceType::IntegratedGpu => "integrated GPU",
            wgpu::DeviceType::VirtualGpu => "virtual GPU",
            wgpu::DeviceType::Cpu => "software (CPU) adapter",
            wgpu::DeviceType::Other => "unknown device type",
        };
        format!("{kind} on {:?}", self.info.backend)
    }
}

fn device_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

fn backend_rank(b: wgpu::Backend) -> u8 {
    match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal => 0,
        wgpu::Backend::Dx12 => 1,
        wgpu::Backend::Gl => 2,
        _ => 3,
    }
}

type PipelineKey = (
    &'static str,
    crate::gpu::kernels::Variant,
    Vec<(&'static str, u64)>,
);

/// A wgpu device and queue, with what the optimizers need to know of them.
/// Cheap to clone (wgpu's handles are reference counted); optimizers keep a
/// clone.
#[derive(Clone)]
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    pub(crate) pipelines: Arc<Mutex<HashMap<PipelineKey, crate::gpu::kernels::Kernel>>>,
    lost: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .finish()
    }
}

impl GpuContext {
    /// A device on the best adapter there is: hardware before software,
    /// honouring `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`
    /// ([`AdapterSelection::from_env`]).
    pub fn new() -> Result<Self> {
        Self::with_selection(&AdapterSelection::from_env())
    }

    /// The adapters [`GpuContext::with_selection`] chooses among, best
    /// first: those of the selection's backends, except that with all
    /// backends selected GL's are looked at only where Vulkan, Metal and
    /// DX12 have no eligible adapter.
    pub fn candidates(selection: &AdapterSelection) -> Vec<AdapterCandidate> {
        let _search = adapter_search_lock();
        search(selection).into_iter().map(|(c, _)| c).collect()
    }

    /// A device on the best adapter that `selection` allows (the first
    /// eligible one of [`GpuContext::candidates`]: a Vulkan, Metal or DX12
    /// adapter, software ones included, before any GL adapter where
    /// `selection` has all backends), with the adapter's own limits (so large models get the largest buffers the
    /// hardware has) and timestamp queries where it has them.
    pub fn with_selection(selection: &AdapterSelection) -> Result<Self> {
        // One adapter search at a time in the process: wgpu's GL backend
        // shares one EGL context between the adapters of an instance and
        // panics (EGL `BadAccess` in wgpu-hal) when two threads probe it at
        // once, as two tests making contexts in parallel do.
        let _search = adapter_search_lock();
        let chosen = search(selection).into_iter().find(|(c, _)| c.eligible());
        let adapter = chosen.map(|(_, a)| a).ok_or_else(|| Error::NoAdapter {
            filter: selection.describe(),
        })?;
        let info = adapter.get_info();
        let wanted = wgpu::Features::TIMESTAMP_QUERY;
        let desc = wgpu::DeviceDescriptor {
            label: Some("wgpu-optim"),
            required_features: adapter.features() & wanted,
            required_limits: adapter.limits(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| {
            Error::RequestDevice {
                adapter: info.name.clone(),
                reason: e.to_string(),
            }
        })?;
        // Errors we do not catch in a scope are reported, never a panic.
        device.on_uncaptured_error(Arc::new(|e: wgpu::Error| {
            eprintln!("wgpu-optim: uncaptured wgpu error: {e}");
        }));
        Ok(Self::wrap(device, queue, info))
    }

    /// Wraps a device the caller already has (their model lives on it), so
    /// optimizers can step the caller's buffers in place. `info` describes
    /// the adapter where the caller has it; it is only reported. The
    /// optimizers size their chunks and buffers by this device's limits
    /// ([`GpuContext::limits`]), whatever the adapter could do: WebGPU's
    /// defaults (`wgpu::Limits::default()`) host every rule and option
    /// (the README's "Device limits" lists what each kernel needs).
    pub fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: Option<wgpu::AdapterInfo>,
    ) -> Self {
        let info = info.unwrap_or(wgpu::AdapterInfo {
            name: "user device".into(),
            vendor: 0,
            device: 0,
            device_type: wgpu::DeviceType::Other,
            device_pci_bus_id: String::new(),
            driver: String::new(),
            driver_info: String::new(),
            backend: wgpu::Backend::Noop,
            subgroup_min_size: 0,
            subgroup_max_size: 0,
            transient_saves_memory: None,
            limit_bucket: None,
        });
        Self::wrap(device, queue, info)
    }

    fn wrap(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Self {
        let lost = Arc::new(Mutex::new(None));
        let lost2 = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut l) = lost2.lock() {
                *l = Some(format!("{reason:?}: {message}"));
            }
        });
        GpuContext {
            device,
            queue,
            info,
            pipelines: Arc::new(Mutex::new(HashMap::new())),
            lost,
        }
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The adapter's description.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// `name (backend)`, for reports.
    pub fn adapter_label(&self) -> String {
        format!("{} ({:?})", self.info.name, self.info.backend)
    }

    /// The device's limits.
    pub fn limits(&self) -> wgpu::Limits {
        self.device.limits()
    }

    /// Whether the device was lost, and why.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().ok().and_then(|l| l.clone())
    }

    /// Blocks until all submitted work is done.
    pub fn wait(&self) -> Result<()> {
        let r = self.device.poll(wgpu::PollType::wait_indefinitely());
        if let Some(reason) = self.lost() {
            return Err(Error::DeviceLost {
                during: "waiting for the GPU",
                reason,
            });
        }
        r.map(|_| ()).map_err(|e| Error::Readback(e.to_string()))
    }

    /// Runs `f` inside validation and out-of-memory error scopes and turns
    /// what they caught into typed errors.
    pub(crate) fn scoped<T>(&self, during: &'static str, f: impl FnOnce() -> T) -> Result<T> {
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let out = f();
        let oom = pollster::block_on(oom.pop());
        let validation = pollster::block_on(validation.pop());
        // A lost (or destroyed) device ignores work without an error, as
        // WebGPU specifies; its lost callback runs when the device is next
        // polled. Poll (without waiting) so that it has run, then name the
        // cause.
        let _ = self.device.poll(wgpu::PollType::Poll);
        if let Some(reason) = self.lost() {
            return Err(Error::DeviceLost { during, reason });
        }
        if let Some(e) = oom {
            return Err(Error::OutOfMemory {
                during,
                message: e.to_string(),
            });
        }
        if let Some(e) = validation {
            return Err(Error::Validation {
                during,
                message: e.to_string(),
            });
        }
        Ok(out)
    }
}

/// The lock every adapter search holds (see [`GpuContext::with_selection`]).
fn adapter_search_lock() -> std::sync::MutexGuard<'static, ()> {
    static SEARCH: Mutex<()> = Mutex::new(());
    SEARCH.lock().unwrap_or_else(|p| p.into_inner())
}

/// The process's `wgpu::Instance` for these backends, made on first use and
/// shared by every context after.
///
/// Fix: each context used to make an instance of its own. wgpu-core numbers
/// resources per instance, so a buffer made on one context's device and
/// handed to an optimizer on another (`from_buffers`) was not caught: its id
/// named some unrelated buffer of the other instance, which the optimizer
/// then stepped in silence (or wgpu panicked where no buffer had that id).
/// With one instance the ids are distinct and wgpu reports a buffer of
/// another device as a validation error ([`Error::Validation`]). Buffers
/// from an instance the caller made themselves cannot be told apart.
fn make_instance(selection: &AdapterSelection) -> wgpu::Instance {
    static INSTANCES: std::sync::OnceLock<Mutex<HashMap<u32, wgpu::Instance>>> =
        std::sync::OnceLock::new();
    let make = || {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = selection.backends;
        wgpu::Instance::new(desc)
    };
    let Ok(mut instances) = INSTANCES.get_or_init(Default::default).lock() else {
        return make();
    };
    instances
        .entry(selection.backends.bits())
        .or_insert_with(make)
        .clone()
}

/// The adapters a search for `selection` looks at, best first (eligible
/// ones before the others). With all backends selected, Vulkan, Metal and
/// DX12 first, and GL only where none of those has an eligible adapter
/// (`WGPU_BACKEND=gl` asks for it): making a GL instance probes EGL, and
/// Mesa's EGL prints `error: XDG_RUNTIME_DIR is invalid ...` on a machine
/// without a display, which reads as a failure where nothing failed.
fn search(selection: &AdapterSelection) -> Vec<(AdapterCandidate, wgpu::Adapter)> {
    if selection.backends == wgpu::Backends::all() {
        let primary = AdapterSelection {
            backends: wgpu::Backends::PRIMARY,
            name: selection.name.clone(),
        };
        let found = candidates_of(&make_instance(&primary), &primary);
        if found.iter().any(|(c, _)| c.eligible()) {
            return found;
        }
    }
    candidates_of(&make_instance(selection), selection)
}

fn candidates_of(
    instance: &wgpu::Instance,
    selection: &AdapterSelection,
) -> Vec<(AdapterCandidate, wgpu::Adapter)> {
    let adapters = pollster::block_on(instance.enumerate_adapters(selection.backends));
    let mut out: Vec<(AdapterCandidate, wgpu::Adapter)> = adapters
        .into_iter()
        .map(|a| {
            let info = a.get_info();
            let compute = a
                .get_downlevel_capabilities()
                .flags
                .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS);
            let name_matches = selection
                .name
                .as_ref()
                .is_none_or(|n| info.name.to_lowercase().contains(&n.to_lowercase()));
            let rank = (device_rank(info.device_type), backend_rank(info.backend));
            (
                AdapterCandidate {
                    limits: a.limits(),
                    features: a.features(),
                    info,
                    compute,
                    name_matches,
                    rank,
                },
                a,
            )
        })
        .collect();
    out.sort_by_key(|(c, _)| (!c.eligible(), c.rank));
    out
}
