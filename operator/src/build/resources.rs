//! Default compute resources of every container, sized for a small cluster: with requests and
//! limits on every container (the migration Job's too), a namespace whose ResourceQuota
//! requires them admits every pod. A `resources` in the spec replaces a default as a whole.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{Component, Infra};

/// (cpu request, memory request, cpu limit, memory limit).
type Sizes = (&'static str, &'static str, &'static str, &'static str);

fn requirements((cpu, memory, cpu_limit, memory_limit): Sizes) -> ResourceRequirements {
    let pair = |cpu: &str, memory: &str| {
        BTreeMap::from([("cpu".to_string(), Quantity(cpu.into())), ("memory".to_string(), Quantity(memory.into()))])
    };
    ResourceRequirements {
        requests: Some(pair(cpu, memory)),
        limits: Some(pair(cpu_limit, memory_limit)),
        ..ResourceRequirements::default()
    }
}

/// A chatmesh service's container.
pub fn service(component: Component) -> ResourceRequirements {
    requirements(match component {
        // Holds every client connection.
        Component::Gateway => ("100m", "128Mi", "1", "512Mi"),
        // Transcribes audio.
        Component::Speech => ("100m", "128Mi", "1", "1Gi"),
        _ => ("50m", "64Mi", "500m", "256Mi"),
    })
}

/// The migration Job's container.
pub fn migration() -> ResourceRequirements {
    requirements(("50m", "64Mi", "500m", "256Mi"))
}

/// A managed server's container.
pub fn server(infra: Infra) -> ResourceRequirements {
    requirements(match infra {
        Infra::Mysql => ("250m", "512Mi", "1", "1Gi"),
        Infra::Redis => ("50m", "64Mi", "500m", "256Mi"),
        Infra::Rabbitmq => ("100m", "256Mi", "1", "512Mi"),
        Infra::Elasticsearch => ("250m", "2Gi", "1", "2Gi"),
    })
}

/// A memory quantity in bytes (`512Mi`, `2Gi`, `1.5G`, `1073741824`); None when it is not one
/// of those forms (e.g. an exponent, which nobody writes for memory).
pub fn bytes(quantity: &str) -> Option<u64> {
    let split = quantity.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let factor: u64 = match suffix {
        "" => 1,
        "k" => 1000,
        "M" => 1000u64.pow(2),
        "G" => 1000u64.pow(3),
        "T" => 1000u64.pow(4),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some((value * factor as f64) as u64)
}

/// Elasticsearch's heap in MiB: half the container's memory limit (or request), as Elastic
/// advises (the rest is file cache), at least 256 MiB and below 31 GiB (compressed pointers).
pub fn elasticsearch_heap_mib(resources: &ResourceRequirements) -> u64 {
    let memory = |m: &Option<BTreeMap<String, Quantity>>| m.as_ref()?.get("memory").and_then(|q| bytes(&q.0));
    let Some(memory) = memory(&resources.limits).or_else(|| memory(&resources.requests)) else { return 512 };
    (memory / 2 / (1 << 20)).clamp(256, 31 * 1024 - 1)
}
