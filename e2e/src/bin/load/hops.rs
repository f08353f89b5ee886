//! The per-hop breakdown of a run: `chatmesh_message_hop_seconds` scraped from each process's
//! admin `/metrics` before and after, subtracted, summed over processes, and printed as a table.

use std::collections::BTreeMap;

const METRIC: &str = "chatmesh_message_hop_seconds";

/// The order of the path (the names `chatmesh_common::telemetry::Hop` exports); others follow.
const ORDER: &[&str] = &[
    "gateway_decode_session",
    "transmit_membership",
    "transmit_sender_profile",
    "queue_publish_confirm",
    "gateway_transmit_call",
    "push_presence_lookup",
    "push_local_deliver",
    "push_remote_publish",
    "websocket_write",
    "gateway_total",
];

/// One hop's histogram: cumulative counts by upper bound, sum and count.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    buckets: BTreeMap<u64, f64>, // keyed by the bound's bits (bounds are positive, so they sort)
    sum: f64,
    count: f64,
}

/// Every hop's histogram, by hop name.
#[derive(Debug, Default, Clone)]
pub struct Snapshot(BTreeMap<String, Histogram>);

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let len = labels[start..].find('"')?;
    Some(&labels[start..start + len])
}

impl Snapshot {
    /// The hop histograms in a Prometheus text exposition.
    pub fn parse(text: &str) -> Self {
        let mut hops: BTreeMap<String, Histogram> = BTreeMap::new();
        for line in text.lines().filter(|l| l.starts_with(METRIC)) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let Some((name, labels)) = series.split_once('{') else { continue };
            let Some(hop) = label(labels, "hop") else { continue };
            let h = hops.entry(hop.to_string()).or_default();
            match &name[METRIC.len()..] {
                "_bucket" => {
                    let le = match label(labels, "le") {
                        Some("+Inf") => f64::INFINITY,
                        Some(le) => le.parse().unwrap_or(f64::INFINITY),
                        None => continue,
                    };
                    *h.buckets.entry(le.to_bits()).or_default() += value;
                }
                "_sum" => h.sum += value,
                "_count" => h.count += value,
                _ => {}
            }
        }
        Snapshot(hops)
    }

    /// Adds another process's histograms.
    pub fn merge(&mut self, other: Snapshot) {
        for (hop, h) in other.0 {
            let mine = self.0.entry(hop).or_default();
            for (le, n) in h.buckets {
                *mine.buckets.entry(le).or_default() += n;
            }
            mine.sum += h.sum;
            mine.count += h.count;
        }
    }

    /// What happened between `before` and `self`.
    pub fn since(&self, before: &Snapshot) -> Snapshot {
        let mut out = self.clone();
        for (hop, h) in out.0.iter_mut() {
            let Some(b) = before.0.get(hop) else { continue };
            for (le, n) in h.buckets.iter_mut() {
                *n -= b.buckets.get(le).copied().unwrap_or(0.0);
            }
            h.sum -= b.sum;
            h.count -= b.count;
        }
        out
    }

    /// The table: per hop, how often, mean, and p50/p99 interpolated within buckets.
    pub fn table(&self) -> String {
        let mut names: Vec<&String> = self.0.keys().collect();
        names.sort_by_key(|n| ORDER.iter().position(|o| o == n).unwrap_or(ORDER.len()));
        let mut out = String::from("| hop | count | mean ms | p50 ms | p99 ms |\n|---|---|---|---|---|\n");
        for name in names {
            let h = &self.0[name];
            if h.count <= 0.0 {
                continue;
            }
            out.push_str(&format!(
                "| {name} | {:.0} | {:.3} | {:.3} | {:.3} |\n",
                h.count,
                h.sum / h.count * 1000.0,
                h.quantile(0.5) * 1000.0,
                h.quantile(0.99) * 1000.0
            ));
        }
        out
    }
}

impl Histogram {
    /// The `q` quantile, linear within its bucket (as Prometheus's histogram_quantile).
    fn quantile(&self, q: f64) -> f64 {
        let rank = q * self.count;
        let (mut lower, mut below) = (0.0, 0.0);
        for (&bits, &n) in &self.buckets {
            let upper = f64::from_bits(bits);
            if n >= rank {
                if upper.is_infinite() {
                    return lower; // beyond the last bound: its lower edge is all we know
                }
                let width = n - below;
                return if width <= 0.0 { upper } else { lower + (upper - lower) * (rank - below) / width };
            }
            (lower, below) = (upper, n);
        }
        lower
    }
}

/// The merged hop histograms of every process at `urls`.
pub async fn scrape(urls: &[String]) -> Snapshot {
    let mut all = Snapshot::default();
    for text in expositions(urls).await {
        all.merge(Snapshot::parse(&text));
    }
    all
}

/// Counter `name` summed over the processes at `urls` (its series, if labelled, summed too).
pub async fn counter(urls: &[String], name: &str) -> f64 {
    expositions(urls).await.iter().map(|text| sum_of(text, name)).sum()
}

fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Each answering process's `/metrics` text. Processes that do not answer count as empty: a
/// breakdown with a hole beats no figures.
async fn expositions(urls: &[String]) -> Vec<String> {
    let mut texts = Vec::with_capacity(urls.len());
    for url in urls {
        match reqwest::get(url).await {
            Ok(rsp) => match rsp.text().await {
                Ok(text) => texts.push(text),
                Err(e) => eprintln!("scraping {url}: {e}"),
            },
            Err(e) => eprintln!("scraping {url}: {e}"),
        }
    }
    texts
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE chatmesh_message_hop_seconds histogram
chatmesh_message_hop_seconds_bucket{hop="transmit_membership",le="0.001"} 50
chatmesh_message_hop_seconds_bucket{hop="transmit_membership",le="0.002"} 90
chatmesh_message_hop_seconds_bucket{hop="transmit_membership",le="+Inf"} 100
chatmesh_message_hop_seconds_sum{hop="transmit_membership"} 0.15
chatmesh_message_hop_seconds_count{hop="transmit_membership"} 100
chatmesh_other_seconds_count{hop="x"} 7
"#;

    #[test]
    fn quantiles_interpolate_within_buckets_and_runs_subtract() {
        let after = Snapshot::parse(TEXT);
        let h = &after.0["transmit_membership"];
        assert_eq!(h.count, 100.0);
        assert!((h.quantile(0.5) - 0.001).abs() < 1e-12);
        assert!((h.quantile(0.7) - 0.0015).abs() < 1e-12);
        assert_eq!(h.quantile(0.99), 0.002, "past the last finite bound: that bound");
        let diff = after.since(&after);
        assert_eq!(diff.0["transmit_membership"].count, 0.0);
        assert!(!diff.table().contains("transmit_membership"), "empty hops are left out");
        assert!(after.table().contains("| transmit_membership | 100 | 1.500 |"), "{}", after.table());
        assert!(!after.0.contains_key("x"));
    }

    #[test]
    fn counters_sum_their_series_and_ignore_longer_names() {
        let text = "# TYPE chatmesh_messages_stored_total counter\n\
                    chatmesh_messages_stored_total 120\n\
                    chatmesh_messages_stored_total_extra 5\n\
                    chatmesh_hits_total{what=\"a\"} 2\n\
                    chatmesh_hits_total{what=\"b\"} 3\n";
        assert_eq!(sum_of(text, "chatmesh_messages_stored_total"), 120.0);
        assert_eq!(sum_of(text, "chatmesh_hits_total"), 5.0);
        assert_eq!(sum_of(text, "chatmesh_missing_total"), 0.0);
    }
}
