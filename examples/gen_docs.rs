//! Writes shell completions and man pages for `piped` and `pipec`, generated from their
//! clap definitions so they can never describe flags the programs do not have.
//!
//! ```text
//! cargo run --example gen_docs -- DIR
//!   DIR/completions/piped.bash  _piped  piped.fish   (and the same for pipec)
//!   DIR/man/piped.1  pipec.1  pipec-relay.1
//! ```
//!
//! Install, for example: `cp DIR/man/*.1 /usr/local/share/man/man1/`,
//! `cp DIR/completions/piped.bash /etc/bash_completion.d/piped`, `_piped` into a
//! directory on zsh's `$fpath`, `piped.fish` into `~/.config/fish/completions/`.
//!
//! `tests/packaging.rs` includes this file as a module and calls [`generate`], so the
//! generator is exercised by `cargo test` without building the example separately.

use clap::CommandFactory;
use clap_complete::Shell;
use pipe::config::cli::{PipecArgs, PipedArgs};
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The shells completions are written for.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes completions into `out/completions` and man pages into `out/man`, creating
/// both; returns every file written.
pub fn generate(out: &Path) -> io::Result<Vec<PathBuf>> {
    let completions = out.join("completions");
    let man = out.join("man");
    std::fs::create_dir_all(&completions)?;
    std::fs::create_dir_all(&man)?;
    let mut written = Vec::new();
    for mut cmd in [PipedArgs::command(), PipecArgs::command()] {
        let name = cmd.get_name().to_string();
        for shell in SHELLS {
            written.push(clap_complete::generate_to(
                shell,
                &mut cmd,
                &name,
                &completions,
            )?);
        }
        written.extend(man_pages(cmd, &man)?);
    }
    Ok(written)
}

/// One page for the program and one per subcommand (`pipec-relay.1`).
fn man_pages(mut cmd: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    cmd.build();
    let name = cmd.get_name().to_string();
    // "piped 0.1.0 (protocol v1)": the footer of every page.
    let source = format!("{name} {}", cmd.get_version().unwrap_or_default());
    let mut pages = vec![write_page(clap_mangen::Man::new(cmd.clone()), &name, dir)?];
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let page_name = format!("{name}-{}", sub.get_name());
        let man = clap_mangen::Man::new(sub.clone().display_name(&page_name))
            .title(&page_name)
            .source(&source);
        pages.push(write_page(man, &page_name, dir)?);
    }
    Ok(pages)
}

fn write_page(man: clap_mangen::Man, name: &str, dir: &Path) -> io::Result<PathBuf> {
    let mut page = Vec::new();
    man.render(&mut page)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page)?;
    Ok(path)
}

#[allow(dead_code)] // unused when tests/packaging.rs includes this file as a module
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir] = args.as_slice() else {
        eprintln!("usage: gen_docs DIR   (writes DIR/completions and DIR/man)");
        return ExitCode::from(2);
    };
    match generate(Path::new(dir)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write into {dir}: {e}");
            ExitCode::from(1)
        }
    }
}
