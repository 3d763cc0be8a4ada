//! A device health sample from `sysinfo`, as the protocol's [`DeviceMetrics`].

use std::path::{Path, PathBuf};

use outpost_protocol::DeviceMetrics;
use sysinfo::{Components, CpuRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};

/// Samples CPU, memory, the data directory's disk and temperatures. Keep one
/// alive between samples: CPU use is measured between two refreshes, so the
/// first sample after [`MetricsSampler::new`] reads 0 % on some systems.
pub struct MetricsSampler {
    system: System,
    disks: Disks,
    components: Components,
    data_dir: PathBuf,
}

impl MetricsSampler {
    /// A sampler whose disk figures are for the volume holding `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        let refresh = RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
            .with_memory(MemoryRefreshKind::nothing().with_ram());
        Self {
            system: System::new_with_specifics(refresh),
            disks: Disks::new_with_refreshed_list(),
            components: Components::new_with_refreshed_list(),
            data_dir: data_dir.to_owned(),
        }
    }

    /// Takes a sample.
    pub fn sample(&mut self) -> DeviceMetrics {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.disks.refresh(true);
        self.components.refresh(true);
        let (disk_total_bytes, disk_used_bytes) = self.data_disk();
        DeviceMetrics {
            cpu_percent: finite_or_zero(self.system.global_cpu_usage()),
            mem_used_bytes: self.system.used_memory(),
            mem_total_bytes: self.system.total_memory(),
            disk_used_bytes,
            disk_total_bytes,
            temperature_c: self
                .components
                .iter()
                .filter_map(|c| c.temperature())
                .filter(|t| t.is_finite())
                .reduce(f32::max),
        }
    }

    /// Total and used bytes of the disk whose mount point is the longest
    /// prefix of the data directory; zeros when none matches.
    fn data_disk(&self) -> (u64, u64) {
        let dir = self
            .data_dir
            .canonicalize()
            .unwrap_or_else(|_| self.data_dir.clone());
        self.disks
            .iter()
            .filter(|d| dir.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len())
            .map_or((0, 0), |d| {
                let total = d.total_space();
                (total, total.saturating_sub(d.available_space()))
            })
    }
}

fn finite_or_zero(value: f32) -> f32 {
    if value.is_finite() {
        value.max(0.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_reports_memory_and_the_data_directorys_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sampler = MetricsSampler::new(dir.path());
        let metrics = sampler.sample();
        assert!(metrics.mem_total_bytes > 0);
        assert!(metrics.mem_used_bytes <= metrics.mem_total_bytes);
        assert!(metrics.disk_used_bytes <= metrics.disk_total_bytes);
        assert!(metrics.cpu_percent.is_finite() && metrics.cpu_percent >= 0.0);
        if let Some(t) = metrics.temperature_c {
            assert!(t.is_finite());
        }
    }
}
