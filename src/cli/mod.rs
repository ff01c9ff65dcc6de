//! Subcommands of the `wgpu-optim` binary.

pub mod bench;
pub mod conformance;
pub mod info;

/// Whether `info` is a software rasterizer running on the CPU (Mesa's
/// llvmpipe/lavapipe, SwiftShader, Microsoft's WARP): its kernels are the
/// real ones, its speed says nothing about a GPU's. Drivers report these as
/// `DeviceType::Cpu`; the names catch one that reports otherwise.
pub fn software_adapter(info: &wgpu::AdapterInfo) -> bool {
    // WARP calls itself "Microsoft Basic Render Driver".
    const NAMES: [&str; 4] = [
        "llvmpipe",
        "lavapipe",
        "swiftshader",
        "microsoft basic render driver",
    ];
    let name = info.name.to_lowercase();
    info.device_type == wgpu::DeviceType::Cpu || NAMES.iter().any(|n| name.contains(n))
}

#[cfg(test)]
mod tests {
    use super::software_adapter;

    fn info(name: &str, device_type: wgpu::DeviceType) -> wgpu::AdapterInfo {
        wgpu::AdapterInfo {
            name: name.into(),
            vendor: 0,
            device: 0,
            device_type,
            device_pci_bus_id: String::new(),
            driver: String::new(),
            driver_info: String::new(),
            backend: wgpu::Backend::Vulkan,
            subgroup_min_size: 0,
            subgroup_max_size: 0,
            transient_saves_memory: None,
            limit_bucket: None,
        }
    }

    #[test]
    fn software_adapters_are_known_by_type_or_name() {
        use wgpu::DeviceType::*;
        assert!(software_adapter(&info("anything", Cpu)));
        assert!(software_adapter(&info(
            "llvmpipe (LLVM 15.0.6, 256 bits)",
            Other
        )));
        assert!(software_adapter(&info(
            "SwiftShader Device (Subzero)",
            Other
        )));
        assert!(software_adapter(&info(
            "Microsoft Basic Render Driver",
            Other
        )));
        assert!(!software_adapter(&info("NVIDIA H200", DiscreteGpu)));
        assert!(!software_adapter(&info(
            "AMD Radeon Graphics (RADV)",
            IntegratedGpu
        )));
    }
}
