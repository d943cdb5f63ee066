//! `glimpse fetch-model MANIFEST`: download the model a manifest names, verify its checksum, and
//! extract it into place, so a device can go from a bare install to a working backbone.

use std::path::PathBuf;

use clap::Args;

use super::common::ConfigError;
use crate::vision::fetch::fetch_model;
use crate::vision::manifest::ModelManifest;

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Model manifest with `url` and checksums (e.g. models/mobilenetv2-12.toml).
    pub manifest: PathBuf,
    /// Where to put the model (default: the manifest's model path).
    #[arg(long)]
    pub dest: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: &FetchArgs) -> anyhow::Result<()> {
    let manifest = ModelManifest::load(&args.manifest).map_err(|e| ConfigError(e.to_string()))?;
    let path = fetch_model(&manifest, args.dest.as_deref(), !args.quiet)?;
    println!("{}", path.display());
    Ok(())
}
