//! examples/gen_docs.rs: completions for bash, zsh and fish and man pages that name
//! every flag.

use super::{gen_docs, run, tool};
use clap::CommandFactory;
use pipe::config::cli::{PipecArgs, PipedArgs};
use std::process::Command;

// --- completions and man pages ---------------------------------------------------------------

#[test]
fn gen_docs_writes_completions_and_man_pages() {
    let dir = tempfile::tempdir().unwrap();
    let written = gen_docs::generate(dir.path()).unwrap();
    for f in &written {
        assert!(
            std::fs::metadata(f).unwrap().len() > 100,
            "{} is nearly empty",
            f.display()
        );
    }
    let file = |rel: &str| {
        std::fs::read_to_string(dir.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    assert_eq!(gen_docs::SHELLS.len(), 3);
    for mut cmd in [PipedArgs::command(), PipecArgs::command()] {
        cmd.build();
        let name = cmd.get_name().to_string();
        let bash = file(&format!("completions/{name}.bash"));
        let zsh = file(&format!("completions/_{name}"));
        let fish = file(&format!("completions/{name}.fish"));
        let man = file(&format!("man/{name}.1"));
        assert!(bash.contains(&format!("_{name}()")), "bash function");
        assert!(zsh.starts_with(&format!("#compdef {name}")));
        let version = cmd.get_version().unwrap();
        assert!(
            man.contains(&format!(".TH {name} 1")) && man.contains(version),
            "man header"
        );
        let longs: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| !["help", "version"].contains(l))
            .map(str::to_string)
            .collect();
        assert!(longs.len() >= 5, "{name}: {longs:?}");
        for section in [
            ".SH ENVIRONMENT",
            ".SH \"EXIT STATUS\"",
            ".SH EXAMPLES",
            "PIPE_TOKEN",
        ] {
            assert!(man.contains(section), "{name}.1 lacks {section}");
        }
        assert!(
            !man.contains("help(1)"),
            "{name}.1 points to a help page that is not there"
        );
        for l in &longs {
            assert!(
                bash.contains(&format!("--{l}")),
                "bash completion lacks --{l}"
            );
            assert!(
                zsh.contains(&format!("--{l}")),
                "zsh completion lacks --{l}"
            );
            assert!(
                fish.contains(&format!("-l {l}")),
                "fish completion lacks {l}"
            );
            assert!(
                man.contains(&format!("\\-\\-{}", l.replace('-', "\\-"))),
                "{name}.1 lacks --{l}"
            );
        }
        if let Some(bash_bin) = tool("/usr/bin/bash").or(tool("/bin/bash")) {
            let out = run(Command::new(bash_bin)
                .arg("-n")
                .arg(dir.path().join(format!("completions/{name}.bash"))));
            assert!(
                out.status.success(),
                "bash -n: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // pipec's page lists every forward option with an example, as --help does.
    let pipec = file("man/pipec.1");
    assert!(
        pipec.contains(".SH \"FORWARD OPTIONS\""),
        "pipec.1 lacks FORWARD OPTIONS"
    );
    assert!(
        pipec.contains("see FORWARD OPTIONS"),
        "--forward does not point to it"
    );
    for (opt, _, example) in pipe::config::cli::FORWARD_OPTIONS {
        for text in [opt, example] {
            let roff = text.replace('-', "\\-");
            assert!(pipec.contains(&roff), "pipec.1 lacks {text}");
        }
    }
    let relay = file("man/pipec-relay.1");
    assert!(
        relay.contains(".TH pipec-relay 1") && relay.contains("LISTEN") && relay.contains("TARGET")
    );
    if let Some(groff) = tool("/usr/bin/groff") {
        for page in written
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "1"))
        {
            let out = run(Command::new(groff)
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(page));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stderr.is_empty(),
                "{}: {stderr}",
                page.display()
            );
        }
    }
}
