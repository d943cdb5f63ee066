//! `glimpse classify IMAGE...`: the top-k classes of each image, from the backbone's ImageNet
//! logits or, with `--head`, from a trained head. A table for people, JSON Lines for machines.
//! An image that cannot be read is reported on its own line and makes the exit status non-zero,
//! but does not stop the other images.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::common::{ConfigError, ModelArgs};
use crate::vision::embedder::Embedder;
use crate::vision::labels::{softmax, top_k};
use crate::vision::preprocess::DecodeLimits;

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A head file from `glimpse train`: report its classes instead of ImageNet's.
    #[arg(long)]
    pub head: Option<PathBuf>,
    /// How many classes to report per image.
    #[arg(short = 'k', long, default_value_t = 5)]
    pub top_k: usize,
    /// One JSON object per image and line, instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Include the embedding vector in the JSON output.
    #[arg(long, requires = "json")]
    pub with_embedding: bool,
    /// Image files (JPEG, PNG or BMP).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// One class of a top-k list.
#[derive(Debug, Serialize)]
pub struct Scored {
    pub index: usize,
    pub label: String,
    pub score: f32,
}

#[derive(Debug, Serialize)]
struct ImageResult<'a> {
    file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<Vec<Scored>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    embedding: Option<&'a [f32]>,
}

/// Returns Ok(true) when every image was classified.
pub fn run(args: &ClassifyArgs) -> anyhow::Result<bool> {
    let backbone = args.model.load_backbone()?;
    let head = match &args.head {
        Some(path) => Some(
            crate::learn::cross_engine::load_head_for(path, &*backbone)
                .map_err(|e| ConfigError(e.to_string()))?,
        ),
        None => None,
    };
    if head.is_none() && backbone.labels().is_none() {
        return Err(ConfigError(format!(
            "model {} has no labels file and no --head was given: nothing to name the classes with",
            args.model.model.display()
        ))
        .into());
    }
    let mut embedder = Embedder::new(
        backbone.clone(),
        args.model.resize_mode(),
        DecodeLimits::default(),
    );
    let mut all_ok = true;
    for path in &args.images {
        let file = path.display().to_string();
        let outcome = crate::fsutil::read_capped(path, embedder.limits().max_bytes)
            .with_context(|| format!("cannot read {file}"))
            .and_then(|bytes| embedder.embed_bytes(&bytes).with_context(|| file.clone()));
        let (output, _) = match outcome {
            Ok(done) => done,
            Err(err) => {
                all_ok = false;
                let message = format!("{err:#}");
                if args.json {
                    print_json(&ImageResult {
                        file,
                        top_k: None,
                        error: Some(message),
                        embedding: None,
                    });
                } else {
                    eprintln!("error: {message}");
                }
                continue;
            }
        };
        let scored = match &head {
            Some(head) => {
                let probs = head.predict(&output.embedding)?;
                top_k(&probs, args.top_k)
                    .into_iter()
                    .map(|(index, score)| Scored {
                        index,
                        label: head.classes()[index].clone(),
                        score,
                    })
                    .collect()
            }
            None => {
                let logits = output
                    .logits
                    .as_deref()
                    .context("the model produced no logits")?;
                let labels = backbone.labels().context("no labels")?;
                top_k(&softmax(logits), args.top_k)
                    .into_iter()
                    .map(|(index, score)| Scored {
                        index,
                        label: labels.name(index).unwrap_or("?").to_string(),
                        score,
                    })
                    .collect()
            }
        };
        if args.json {
            print_json(&ImageResult {
                file,
                top_k: Some(scored),
                error: None,
                embedding: args.with_embedding.then_some(&output.embedding[..]),
            });
        } else {
            println!("{file}");
            for (rank, s) in scored.iter().enumerate() {
                println!(
                    "  {:>2}. {:>5}  {:<32} {:.4}",
                    rank + 1,
                    s.index,
                    s.label,
                    s.score
                );
            }
        }
    }
    Ok(all_ok)
}

fn print_json(result: &ImageResult) {
    match serde_json::to_string(result) {
        Ok(line) => println!("{line}"),
        Err(err) => eprintln!("error: cannot serialize result for {}: {err}", result.file),
    }
}
