//! Writes the man page pushbox(1) (gzipped) and the bash, zsh and fish
//! completions, rendered from the CLI definitions in `src/cli.rs`, into
//! `target/<profile>/assets/`, where `[package.metadata.deb]` picks them
//! up: `cargo deb` alone builds the whole package.

use clap::CommandFactory;
use std::{io::Write, path::PathBuf};

#[allow(dead_code, reason = "build.rs uses the definitions, not the parsed values")]
#[path = "src/cli.rs"]
mod cli;

fn main() -> std::io::Result<()> {
    println!("cargo::rerun-if-changed=src/cli.rs");
    println!("cargo::rerun-if-changed=build.rs");
    // OUT_DIR is target/<profile>/build/pushbox-<hash>/out: the assets go
    // beside the binary, at target/<profile>/assets (cargo-deb's own example
    // does the same, as cargo gives build scripts no path to the profile dir).
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let Some(profile_dir) = out.ancestors().nth(3) else {
        return Ok(());
    };
    let dir = profile_dir.join("assets");
    std::fs::create_dir_all(&dir)?;
    let cmd = cli::Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&page)?;
    std::fs::write(dir.join("pushbox.1.gz"), gz.finish()?)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "pushbox", &dir)?;
    }
    Ok(())
}
