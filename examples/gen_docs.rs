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
use pipe::config::cli::{PipecArgs, PipedArgs, FORWARD_EXAMPLES, FORWARD_HELP, FORWARD_OPTIONS};
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
        // Before the completions build it: building adds clap's `help` subcommand.
        // The page lists the forward options in a section of their own (roff would
        // fill `--help`'s aligned lines into one paragraph).
        let for_man = cmd.clone().mut_args(|a| {
            if a.get_long() == Some("forward") {
                a.help(FORWARD_HELP.replace("see --help", "see FORWARD OPTIONS"))
                    .long_help(None::<&str>)
            } else {
                a
            }
        });
        for shell in SHELLS {
            written.push(clap_complete::generate_to(
                shell,
                &mut cmd,
                &name,
                &completions,
            )?);
        }
        written.extend(man_pages(for_man, &man)?);
    }
    Ok(written)
}

/// The sections clap does not generate, in roff, per program: FORWARD OPTIONS (pipec),
/// ENVIRONMENT, EXIT STATUS and EXAMPLES (the README's exit-code table, in short).
fn extra_sections(name: &str) -> String {
    let env = match name {
        "piped" => {
            ".TP\n\\fBPIPE_TOKEN\\fR\nThe shared secret clients must prove (as \\-\\-token).\n\
.TP\n\\fBPIPE_ADMIN_TOKEN\\fR\nThe bearer token of the admin routes (as \\-\\-admin\\-token).\n\
.TP\n\\fBPIPE_UDP_BIND_ADDR\\fR\nWhere public UDP sockets bind (as \\-\\-udp\\-bind\\-addr).\n\
.TP\n\\fBPIPE_OIDC_ISSUER\\fR, \\fBPIPE_OIDC_CLIENT_ID\\fR\nSign-in for auth=oidc forwards (as \\-\\-oidc\\-issuer, \\-\\-oidc\\-client\\-id).\n\
.TP\n\\fBPIPE_OIDC_CLIENT_SECRET\\fR\npiped's client secret at the issuer (instead of \\-\\-oidc\\-client\\-secret\\-file).\n"
        }
        _ => ".TP\n\\fBPIPE_TOKEN\\fR\nThe server's shared secret, or the user's token (as \\-\\-token).\n\
.TP\n\\fBPIPE_USER\\fR\nThe user name to log in as (as \\-\\-user).\n\
.TP\n\\fBPIPE_INSPECT_TOKEN\\fR\nThe bearer token of the inspector's API (as \\-\\-inspect\\-token).\n",
    };
    let common_env = ".TP\n\\fBRUST_LOG\\fR\nLog filter, e.g. debug or info,pipe=trace; overrides \\-v and \\-q.\n\
.TP\n\\fBNO_COLOR\\fR\nSet: no colours even on a terminal.\n";
    let exits = match name {
        "piped" => {
            ".TP\n0\nStopped by SIGINT or SIGTERM after a clean drain.\n\
.TP\n1\nA runtime failure: cannot listen, cannot start; or a second signal cut the drain short.\n\
.TP\n2\nBad command line or config file.\n"
        }
        _ => {
            ".TP\n0\nStopped by SIGINT or SIGTERM.\n\
.TP\n1\nA runtime failure: no server name resolves at the first connect, a TLS \
problem, a relay that cannot listen; or a second signal cut the stop short.\n\
.TP\n2\nBad command line or config file.\n\
.TP\n3\nThe server refused the login: no token, wrong token, TLS required, version mismatch.\n\
.TP\n4\nThe server refused a forward at its first registration.\n\
.TP\n5\nThe server's operator closed every forward.\n"
        }
    };
    let examples = match name {
        "piped" => {
            ".nf\npiped \\-\\-token \"$(openssl rand \\-hex 16)\" \\-\\-ports 9000\\-9100\n\
piped \\-\\-config /etc/pipe/piped.toml \\-\\-admin 127.0.0.1:8911\n.fi\n"
        }
        _ => {
            ".nf\npipec \\-\\-server vps \\-\\-forward 3000\n\
pipec \\-\\-server vps:8910 \\-\\-forward tcp:22:2222 \\-\\-forward http:3000:myapp\n\
pipec \\-\\-server node1.vps \\-\\-server node2.vps \\-\\-forward tcp:3000:9000\n\
pipec relay tcp:9299 unix:/tmp/agent.sock\n.fi\n"
        }
    };
    let forward_options = match name {
        "pipec" => forward_options(),
        _ => String::new(),
    };
    format!(
        "{forward_options}.SH ENVIRONMENT\n{env}{common_env}.SH \"EXIT STATUS\"\n{exits}.SH EXAMPLES\n{examples}"
    )
}

/// Text as roff reads it: a hyphen is `\-` (a plain `-` may print as a dash), and a
/// backslash is escaped.
fn roff_escape(s: &str) -> String {
    s.replace('\\', "\\e").replace('-', "\\-")
}

/// pipec's FORWARD OPTIONS section: spec examples, then every `,KEY=VALUE` option with
/// what it does and an example, from the same table as `pipec --help`.
fn forward_options() -> String {
    let mut out = String::from(
        ".SH \"FORWARD OPTIONS\"\nA forward is \\fB\\-\\-forward\\fR \\fISPEC\\fR[,\\fIKEY\\fR=\\fIVALUE\\fR...]; \
quote the whole argument in a shell. Examples of \\fISPEC\\fR:\n.RS\n.nf\n",
    );
    for e in FORWARD_EXAMPLES {
        out.push_str(&format!("{}\n", roff_escape(e)));
    }
    out.push_str(
        ".fi\n.RE\n.PP\nOptions (also the keys of a [[forward]] table in the config file):\n",
    );
    for (opt, what, example) in FORWARD_OPTIONS {
        out.push_str(&format!(
            ".TP\n\\fB{}\\fR\n{}\n.br\ne.g. \\fB\\-\\-forward {}\\fR\n",
            roff_escape(opt),
            roff_escape(what),
            roff_escape(&format!("'{example}'"))
        ));
    }
    out
}

/// One page for the program and one per subcommand (`pipec-relay.1`).
fn man_pages(cmd: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    // `help` is clap's built-in subcommand: it has no page of its own to point to.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let name = cmd.get_name().to_string();
    // "piped 0.1.0 (protocol v1)": the footer of every page.
    let source = format!("{name} {}", cmd.get_version().unwrap_or_default());
    let main = write_page(clap_mangen::Man::new(cmd.clone()), &name, dir)?;
    add_sections(&main, &extra_sections(&name))?;
    let mut pages = vec![main];
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

/// Puts `sections` before the page's VERSION section (or at its end).
fn add_sections(page: &Path, sections: &str) -> io::Result<()> {
    let text = std::fs::read_to_string(page)?;
    let text = match text.find("\n.SH VERSION") {
        Some(at) => format!("{}\n{sections}{}", &text[..at], &text[at + 1..]),
        None => format!("{text}{sections}"),
    };
    std::fs::write(page, text)
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
