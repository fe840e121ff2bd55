//! `pipebench`: the benchmark harness of issue 5 (relay vs socat; pipe tunnel vs rathole
//! vs bore; UDP; TLS), with issue 15's memory and stalled-visitor rows, issue 16's
//! inspector row, the cluster's peer-link rows and the real-link rows (`wan`). Run it
//! through `bash benches/run.sh`, which installs the peers, builds, enters a network
//! namespace of its own and calls `pipebench run`.
//!
//! The same binary is the load generator: the orchestrator starts `pipebench echo`,
//! `connrate`, `rtt`, `hold`, `backend`, `bulk`, `stall`, `httpget` and `wanload` as
//! separate processes so that their sockets and CPU never count against the system
//! measured; and the link emulator, `pipebench linkemu`.

mod bulk;
mod cluster;
mod harness;
mod linkemu;
mod load;
mod machine;
mod monitor;
mod peers;
mod procs;
mod report;
mod report_cluster;
mod report_signin;
mod report_stress;
mod report_wan;
mod sections;
mod signin;
mod stats;
mod stress;
mod systems;
mod targets;
mod wan;
mod wan_net;
mod wan_peers;
mod wanload;
mod workloads;

use harness::{Harness, Opts, PipeBuild};
use std::path::{Path, PathBuf};
use std::process::Command;
use systems::Env;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("echo") => load::echo(),
        Some("connrate") => load::connrate(&args[1..]),
        Some("rtt") => load::rtt(&args[1..]),
        Some("hold") => load::hold(&args[1..]),
        Some("backend") => bulk::backend(&args[1..]),
        Some("bulk") => bulk::bulk(&args[1..]),
        Some("stall") => bulk::stall(&args[1..]),
        Some("httpget") => bulk::httpget(&args[1..]),
        Some("wanload") => wanload::wanload(&args[1..]),
        Some("linkemu") => linkemu::linkemu(&args[1..]),
        Some("run") => run(&args[1..]),
        Some("report") => rereport(&args[1..]),
        Some("tuning") => retune(&args[1..]),
        // `cargo bench` / `cargo test --benches` call us with libtest flags: say how to
        // run the real thing instead of starting a 15-minute run by surprise.
        _ => println!("pipebench: run `bash benches/run.sh` (see docs/BENCHMARKS.md)"),
    }
}

/// The value after the last `name` (so later options override earlier ones).
fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .rposition(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn all(args: &[String], name: &str) -> Vec<String> {
    args.windows(2)
        .filter(|w| w[0] == name)
        .map(|w| w[1].clone())
        .collect()
}

fn parse<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    arg(args, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn list(args: &[String], name: &str) -> Option<Vec<String>> {
    arg(args, name).map(|v| v.split(',').map(str::to_string).collect())
}

fn run(args: &[String]) {
    let root = PathBuf::from(arg(args, "--root").unwrap_or_else(|| ".".into()));
    let bin_dir = PathBuf::from(arg(args, "--bin-dir").unwrap_or_else(|| "target/release".into()));
    let cache = PathBuf::from(arg(args, "--cache").unwrap_or_else(|| "benches/.cache".into()));
    let out_md = arg(args, "--out-md").map(PathBuf::from);
    let out_json = arg(args, "--out-json").map(PathBuf::from);
    let opts = Opts {
        rounds: parse(args, "--rounds", 5),
        mem_rounds: parse(args, "--mem-rounds", 3),
        iperf_secs: parse(args, "--iperf-secs", 3),
        conn_secs: parse(args, "--conn-secs", 2.0),
        conn_workers: parse(args, "--conn-workers", 8),
        rtt_secs: parse(args, "--rtt-secs", 2.0),
        udp_rate: arg(args, "--udp-rate").unwrap_or_else(|| "500M".into()),
        udp_len: parse(args, "--udp-len", 1400),
        workloads: list(args, "--workloads").unwrap_or_else(|| {
            ["tcp", "udp", "echo", "mem", "stall", "inspect", "cluster"]
                .map(String::from)
                .to_vec()
        }),
        only: list(args, "--only"),
        wan_rounds: parse(args, "--wan-rounds", 3),
        links: arg(args, "--links").unwrap_or_else(|| wan_net::DEFAULT_LINKS.into()),
        wan_ns: arg(args, "--wan-ns"),
    };
    let mut pipe_bins = vec![PipeBuild {
        label: "main".into(),
        dir: bin_dir,
        env: vec![],
    }];
    for v in all(args, "--variant") {
        match v.split_once('=') {
            Some((label, dir)) => pipe_bins.push(PipeBuild {
                label: label.into(),
                dir: dir.into(),
                env: vec![],
            }),
            None => eprintln!("ignoring --variant {v}: want LABEL=DIR"),
        }
    }
    // --variant-env LABEL=KEY=VALUE: environment for one variant's processes.
    for v in all(args, "--variant-env") {
        let mut parts = v.splitn(3, '=');
        if let (Some(label), Some(k), Some(val)) = (parts.next(), parts.next(), parts.next()) {
            if let Some(b) = pipe_bins.iter_mut().find(|b| b.label == label) {
                b.env.push((k.into(), val.into()));
                continue;
            }
        }
        eprintln!("ignoring --variant-env {v}: want LABEL=KEY=VALUE for a --variant LABEL");
    }
    let work = std::env::temp_dir().join(format!("pipebench-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("scratch directory");
    let rathole = cache.join("bin/rathole");
    let env = Env {
        tls: make_tls(&work)
            .map_err(|e| eprintln!("no TLS material: {e}"))
            .ok(),
        noise: noise_keys(&rathole),
        rathole,
        bore: cache.join("bin/bore"),
        work: work.clone(),
        root: root.clone(),
    };
    let me = std::env::current_exe().expect("own path");
    let mut h = Harness::new(opts.clone(), env, me);
    let machine = machine::Machine::probe(&root, &cache);
    h.run(&pipe_bins);
    let _ = std::fs::remove_dir_all(&work);
    let Harness {
        samples,
        monitor,
        started,
        ..
    } = h;
    let data = report::RunData {
        machine,
        command: arg(args, "--command").unwrap_or_else(|| "bash benches/run.sh".into()),
        opts_text: format!("{opts:?}"),
        elapsed_secs: started.elapsed().as_secs_f64(),
        machine_load: monitor.finish(),
        samples,
        variants: pipe_bins
            .iter()
            .skip(1)
            .map(|b| format!("{}={} {:?}", b.label, b.dir.display(), b.env))
            .collect(),
    };
    if let Some(p) = &out_json {
        write_or_warn(p, &serde_json::to_string_pretty(&data).unwrap_or_default());
    }
    let tuning = std::fs::read_to_string(root.join("benches/TUNING.md")).ok();
    let md = report::markdown(&data, tuning.as_deref());
    match &out_md {
        Some(p) => {
            let existing = std::fs::read_to_string(p).ok();
            let md = merge_sections(&data, md, existing.as_deref());
            write_or_warn(p, &md);
            eprintln!("wrote {}", p.display());
        }
        None => println!("{md}"),
    }
}

/// `pipebench report --json FILE --out-md FILE`: rebuilds the markdown from a saved run
/// (after editing benches/TUNING.md, for example) without measuring again. A saved run
/// of the cluster workload alone rewrites only the cluster section.
fn rereport(args: &[String]) {
    let json = arg(args, "--json").expect("--json FILE");
    let text = std::fs::read_to_string(&json).expect("read the saved run");
    let data: report::RunData = serde_json::from_str(&text).expect("a saved run");
    let root = PathBuf::from(arg(args, "--root").unwrap_or_else(|| ".".into()));
    let tuning = std::fs::read_to_string(root.join("benches/TUNING.md")).ok();
    let md = report::markdown(&data, tuning.as_deref());
    match arg(args, "--out-md") {
        Some(p) => {
            let existing = std::fs::read_to_string(&p).ok();
            let md = merge_sections(&data, md, existing.as_deref());
            write_or_warn(Path::new(&p), &md)
        }
        None => println!("{md}"),
    }
}

/// `pipebench tuning --out-md FILE [--root DIR]`: puts benches/TUNING.md as it is now
/// into FILE's Tuning section and leaves every measured section as it is, for when
/// only the hand-written notes changed.
fn retune(args: &[String]) {
    let out = PathBuf::from(arg(args, "--out-md").expect("--out-md FILE"));
    let root = PathBuf::from(arg(args, "--root").unwrap_or_else(|| ".".into()));
    let tuning = std::fs::read_to_string(root.join("benches/TUNING.md")).ok();
    let existing = std::fs::read_to_string(&out).expect("read the file to update");
    let section = format!(
        "{}\n## Method and raw samples",
        report::tuning_section(tuning.as_deref())
    );
    if !(existing.contains("\n## Tuning\n") && existing.contains("\n## Method and raw samples")) {
        eprintln!("{} has no Tuning section to update", out.display());
        std::process::exit(1);
    }
    write_or_warn(&out, &fresh_tuning(existing, &section));
}

/// The sections a run of their workload alone may replace, put into the file (see
/// `sections::Marked::merge`): the cluster, the real links, sign-in.
fn merge_sections(data: &report::RunData, md: String, existing: Option<&str>) -> String {
    let s = &data.samples;
    let whole = md.clone();
    let cluster = report_cluster::section(data);
    let md = report_cluster::MARKED.merge(s, |x| x.workload == "cluster", &cluster, md, existing);
    let wan = report_wan::section(s, &data.machine, &data.command);
    let md = report_wan::MARKED.merge(s, report_wan::is_wan, &wan, md, existing);
    let signin = report_signin::section(s);
    let merged = report_signin::MARKED.merge(s, report_signin::is_signin, &signin, md, existing);
    fresh_tuning(merged, &whole)
}

/// The Tuning section is benches/TUNING.md as it is now, also when a run of one
/// workload alone keeps the rest of an existing file: it is taken from this run's
/// report `full` (a whole run's file is `full` already, so nothing changes there).
fn fresh_tuning(out: String, full: &str) -> String {
    let span = |md: &str| {
        let b = md.find("\n## Tuning\n")?;
        let e = md[b..].find("\n## Method and raw samples")? + b;
        Some((b, e))
    };
    match (span(&out), span(full)) {
        (Some((b, e)), Some((fb, fe))) => format!("{}{}{}", &out[..b], &full[fb..fe], &out[e..]),
        _ => out,
    }
}

fn write_or_warn(p: &Path, text: &str) {
    if let Some(d) = p.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    if let Err(e) = std::fs::write(p, text) {
        eprintln!("cannot write {}: {e}", p.display());
    }
}

/// A CA and a server certificate for 127.0.0.1, for pipe's TLS rows.
fn make_tls(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let e = |e: rcgen::Error| e.to_string();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "pipebench CA");
    let ca_key = rcgen::KeyPair::generate().map_err(e)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
        .map_err(e)?;
    let leaf_key = rcgen::KeyPair::generate().map_err(e)?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(e)?;
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    let w = |p: &Path, s: String| std::fs::write(p, s).map_err(|e| e.to_string());
    w(&paths.0, ca_cert.pem())?;
    w(&paths.1, leaf_cert.pem())?;
    w(&paths.2, leaf_key.serialize_pem())?;
    Ok(paths)
}

/// A noise keypair from `rathole --genkey`: (private, public).
fn noise_keys(rathole: &Path) -> Option<(String, String)> {
    let out = Command::new(rathole).arg("--genkey").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut private = None;
    let mut public = None;
    while let Some(l) = lines.next() {
        if l.starts_with("Private Key") {
            private = lines.next().map(str::to_string);
        } else if l.starts_with("Public Key") {
            public = lines.next().map(str::to_string);
        }
    }
    Some((private?, public?))
}
