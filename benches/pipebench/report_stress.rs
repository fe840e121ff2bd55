//! The report's sections for issues 15 and 16: memory given back after a bulk load,
//! 200 stalled visitors beside a sibling tunnel, and the inspector's throughput. Like
//! the rest of the report, every number comes from the samples.

use crate::harness::Sample;
use crate::stats::{cell, med, missing_notes, notes_line, systems_in};
use crate::stress::STALLED;
use crate::targets::GIVE_BACK_SLACK_MIB;
use std::fmt::Write as _;

fn rss(s: &[Sample], w: &str, sys: &str, phase: &str, role: &str) -> String {
    cell(s, w, sys, &format!("rss_{phase}_{role}_mib"), 1)
}

pub fn give_back(o: &mut String, s: &[Sample]) {
    let _ = writeln!(
        o,
        "\n## Memory given back (issue 15)\n\nThe memory workload's processes first carry a \
         bulk load: our load process uploads through the system to a sink in the backend, \
         one stream then four, each for the throughput rows' duration (Gbit/s as the sink \
         counted, for context). RSS (VmRSS, MiB) of each process: fresh (started, session \
         up), right after the load, and 10 s after it stopped. Target: back within 10 s to at \
         most fresh + {GIVE_BACK_SLACK_MIB} MiB, each of piped and pipec. \"server\" is piped, \
         rathole's server, `bore server`, the relay or socat (one process; socat's figures \
         include its forks); \"client\" is pipec, rathole's client or `bore local`.\n"
    );
    let _ = writeln!(
        o,
        "| system | server: fresh | server: after load | server: 10 s idle | client: fresh | \
         client: after load | client: 10 s idle | load, 1 stream Gbit/s | load, 4 streams Gbit/s |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    let systems = systems_in(s, "mem");
    for sys in &systems {
        let r = |phase, role| rss(s, "mem", sys, phase, role);
        let _ = writeln!(
            o,
            "| {sys} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r("fresh", "server"),
            r("loaded", "server"),
            r("idle10s", "server"),
            r("fresh", "client"),
            r("loaded", "client"),
            r("idle10s", "client"),
            cell(s, "mem", sys, "load1_gbps", 2),
            cell(s, "mem", sys, "load4_gbps", 2),
        );
    }
    missing_notes(o, s, "mem", &systems, "rss_fresh_server_mib");
}

pub fn stall(o: &mut String, s: &[Sample]) {
    let _ = writeln!(
        o,
        "\n## {STALLED} stalled visitors (issue 15)\n\nOne client session, two tunnels to the same \
         backend (pipe: one `pipec` with two `--forward`s; rathole: one client with two \
         services). On the first, {STALLED} visitors each ask the backend for an endless \
         download, read its first byte and never read again; the second, the sibling, carries \
         a 1-stream bulk upload for the throughput rows' duration. Before (fresh), during \
         (once memory stopped growing, up to 15 s) and after (10 s after the stalled visitors \
         closed): RSS of each process (MiB), the kernel's TCP memory (the `mem` field of \
         `/proc/net/sockstat`, pages shown as MiB; it counts every TCP socket of the host, \
         whatever its namespace, so other work on the machine adds to it) and the sibling's \
         Gbit/s.\n"
    );
    let _ = writeln!(
        o,
        "| system | phase | server RSS | client RSS | kernel TCP memory MiB | sibling Gbit/s |\n\
         | --- | --- | --- | --- | --- | --- |"
    );
    let systems = systems_in(s, "stall");
    for sys in &systems {
        for phase in ["before", "during", "after"] {
            let _ = writeln!(
                o,
                "| {sys} | {phase} | {} | {} | {} | {} |",
                rss(s, "stall", sys, phase, "server"),
                rss(s, "stall", sys, phase, "client"),
                cell(s, "stall", sys, &format!("tcpmem_{phase}_mib"), 1),
                cell(s, "stall", sys, &format!("sibling_{phase}_gbps"), 2),
            );
        }
    }
    missing_notes(o, s, "stall", &systems, "rss_before_server_mib");
    for sys in &systems {
        notes_line(o, s, "stall", sys);
    }
    let stalled = systems
        .iter()
        .filter_map(|sys| med(s, "stall", sys, "stalled").map(|n| format!("{sys} {n:.0}")))
        .collect::<Vec<_>>();
    if !stalled.is_empty() {
        let _ = write!(
            o,
            "\nVisitors whose download started (median): {}.",
            stalled.join(", ")
        );
        if let Some(p) = systems
            .iter()
            .find_map(|sys| med(s, "stall", sys, "tcpmem_pressure_mib"))
        {
            let _ = write!(
                o,
                " The kernel enters TCP memory pressure at {p:.0} MiB (`net.ipv4.tcp_mem`)."
            );
        }
        let _ = writeln!(o);
    }
}

pub fn inspect(o: &mut String, s: &[Sample]) {
    let _ = writeln!(
        o,
        "\n## Inspector (issue 16)\n\nA 32 MiB HTTP/1.1 response (`GET`, `Connection: close`, \
         from an HTTP server in the backend process) through a pipe TCP forward with \
         `,inspect=true` (pipec started with `--inspect 127.0.0.1:0`) and through a plain \
         forward of the same pipec, in alternating order round by round. Gbit/s from connect \
         to the last byte; each round's figure is the median of 5 downloads. No peer has an \
         inspector, so there is no peer row.\n"
    );
    let _ = writeln!(
        o,
        "| system | plain forward Gbit/s | inspected forward Gbit/s | inspected / plain |\n\
         | --- | --- | --- | --- |"
    );
    let systems = systems_in(s, "inspect");
    for sys in &systems {
        let _ = writeln!(
            o,
            "| {sys} | {} | {} | {} |",
            cell(s, "inspect", sys, "http_plain_gbps", 2),
            cell(s, "inspect", sys, "http_inspect_gbps", 2),
            cell(s, "inspect", sys, "http_inspect_ratio", 2),
        );
    }
    missing_notes(o, s, "inspect", &systems, "http_plain_gbps");
    if let (Some(i), Some(p)) = (
        med(s, "inspect", "pipe", "http_inspect_gbps"),
        med(s, "inspect", "pipe", "http_plain_gbps"),
    ) {
        let _ = writeln!(
            o,
            "\nWith the inspector on, pipe carries {:.2}× the plain forward's throughput \
             ({:.0} vs {:.0} MB/s, ratio of the medians).",
            i / p,
            i * 1e9 / 8.0 / 1e6,
            p * 1e9 / 8.0 / 1e6
        );
    }
}
