//! CPU time per message, by process: read from /proc before and after a run's sends, for chatmesh,
//! the servers under it, the load tool itself and the whole machine (the rest is everything
//! else running), and the time the host's hypervisor took the cores away. On shared cores it
//! says which process a message costs most, and whether the host was busy elsewhere.

/// The unit of /proc's times: fixed at 100 for userspace on Linux (whatever the kernel's HZ).
const USER_HZ: f64 = 100.0;

/// Ticks (user + system) by name, in the order given; `machine` is every core's busy time;
/// and when they were read.
pub struct Snapshot(Vec<(String, u64)>, std::time::Instant);

fn ticks_of(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (which may hold spaces), fields 14 and 15 are utime and stime.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum()
}

/// Every core's busy ticks, and the ticks the hypervisor ran something else while a core of
/// this machine wanted to run (steal: on a shared host, time the cores were not ours).
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu = stat.lines().next().unwrap_or_default();
    // user nice system idle iowait irq softirq steal: busy is all but idle, iowait and steal.
    let fields: Vec<u64> = cpu.split_whitespace().skip(1).take(8).filter_map(|f| f.parse().ok()).collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    ([0, 1, 2, 5, 6].into_iter().map(field).sum(), field(7))
}

impl Snapshot {
    /// `processes`: `name:pid` pairs.
    pub fn take(processes: &[String]) -> Self {
        let mut out: Vec<(String, u64)> = processes
            .iter()
            .filter_map(|p| p.split_once(':'))
            .filter_map(|(name, pid)| Some((name.to_string(), ticks_of(pid.parse().ok()?))))
            .collect();
        out.push(("load tool".into(), ticks_of(std::process::id())));
        let (busy, steal) = machine_ticks();
        out.push(("machine".into(), busy));
        out.push(("stolen by the host".into(), steal));
        Self(out, std::time::Instant::now())
    }

    /// The CPU µs per operation of `ops` that the named processes (not the load tool, not the
    /// machine) spent together since `before`.
    pub fn servers_micros_since(&self, before: &Snapshot, ops: usize) -> f64 {
        let ticks: u64 = (self.0.iter().zip(&before.0))
            .filter(|((name, _), _)| !["load tool", "machine", "stolen by the host"].contains(&name.as_str()))
            .map(|((_, after), (_, was))| after.saturating_sub(*was))
            .sum();
        ticks as f64 / USER_HZ * 1e6 / ops.max(1) as f64
    }

    /// The table of what each process spent since `before`, per message of `messages`.
    pub fn table_since(&self, before: &Snapshot, messages: usize) -> String {
        let mut out = String::from("| process | CPU s | CPU µs per message |\n|---|---|---|\n");
        for ((name, after), (_, was)) in self.0.iter().zip(&before.0) {
            let secs = after.saturating_sub(*was) as f64 / USER_HZ;
            out += &format!("| {name} | {secs:.2} | {:.0} |\n", secs * 1e6 / messages.max(1) as f64);
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let capacity = (self.1 - before.1).as_secs_f64() * cores as f64 * USER_HZ;
        let share = |name: &str| {
            let tick = |s: &Snapshot| s.0.iter().find(|(n, _)| n == name).map_or(0, |(_, t)| *t);
            100.0 * tick(self).saturating_sub(tick(before)) as f64 / capacity.max(1.0)
        };
        out += &format!(
            "of {cores} cores over {:.1} s: busy {:.0}%, stolen by the host {:.0}%\n",
            (self.1 - before.1).as_secs_f64(),
            share("machine"),
            share("stolen by the host")
        );
        out
    }
}
