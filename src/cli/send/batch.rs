//! The sending loop of `glimpse send`: up to `--in-flight` samples published before their acks
//! come back, so the device's ingest rate, not the round trip, sets the pace; busy refusals and
//! missing acks sent again with backoff; a progress bar with rate and ETA on a terminal.
//!
//! Bounded: at most `--in-flight` files are held in memory, far below the device's queue (64),
//! so pipelining never turns into busy refusals by itself.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rumqttc::QoS;

use super::tally::{Outcome, Tally};
use super::{is_busy, is_too_large_for, too_large_for_device, SendArgs, Session};
use crate::learn::cache::content_hash;
use crate::learn::identity::Label;
use crate::mqtt::messages::learning::{Ack, AckStatus};

/// One file on its way: which, how often it was sent.
struct Job {
    index: usize,
    attempts: u32,
}

/// A published sample waiting for its ack.
struct Flight {
    job: Job,
    label: String,
    bytes: usize,
    deadline: Instant,
}

/// The progress bar: drawn on a terminal only (indicatif hides it otherwise), never with
/// `--quiet` or `--json`.
fn progress_bar(args: &SendArgs, files: usize) -> ProgressBar {
    if args.quiet || args.json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(files as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "sending {bar:30} {pos}/{len} samples, {per_sec}, eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// The outcome an ack reports.
fn outcome_of(ack: &Ack) -> Outcome {
    match ack.status {
        Some(AckStatus::Accepted) => Outcome::Accepted,
        Some(AckStatus::Duplicate) => Outcome::Duplicate,
        _ => Outcome::Rejected(
            ack.reason
                .clone()
                .unwrap_or_else(|| "rejected without a reason".into()),
        ),
    }
}

/// Sends every file, at most `args.in_flight` at a time, and counts what became of each.
pub(super) fn send_all(
    session: &Session,
    files: &[(PathBuf, Label)],
    args: &SendArgs,
    limit: usize,
) -> anyhow::Result<Tally> {
    let window = args.in_flight.max(1) as usize;
    let bar = progress_bar(args, files.len());
    let mut tally = Tally::default();
    let record = |tally: &mut Tally, index: usize, outcome: Outcome| {
        let (file, label) = &files[index];
        let failed = !matches!(outcome, Outcome::Accepted | Outcome::Duplicate);
        tally.record(file, label, outcome);
        if let Some(failure) = tally
            .failures
            .last()
            .filter(|_| failed && !args.quiet && !args.json)
        {
            let line = Tally::failure_line(failure);
            if bar.is_hidden() {
                println!("{line}");
            } else {
                bar.println(line);
            }
        }
        bar.inc(1);
    };
    let mut queue: VecDeque<Job> = (0..files.len())
        .map(|index| Job { index, attempts: 0 })
        .collect();
    // Sent again no earlier than the instant given (backoff after a busy refusal).
    let mut retries: VecDeque<(Instant, Job)> = VecDeque::new();
    let mut in_flight: HashMap<String, Flight> = HashMap::new();

    loop {
        // Fill the window: retries that are due first, then new files.
        while in_flight.len() < window {
            let now = Instant::now();
            let job = match retries.iter().position(|(at, _)| *at <= now) {
                Some(pos) => retries.remove(pos).map(|(_, job)| job),
                None => queue.pop_front(),
            };
            let Some(mut job) = job else { break };
            let (file, label) = &files[job.index];
            let bytes = match std::fs::read(file) {
                Ok(bytes) => bytes,
                Err(err) => {
                    record(
                        &mut tally,
                        job.index,
                        Outcome::Rejected(format!("unreadable: {err}")),
                    );
                    continue;
                }
            };
            if let Some(reason) = too_large_for_device(bytes.len(), limit) {
                record(&mut tally, job.index, Outcome::Rejected(reason));
                continue;
            }
            let id = content_hash(&bytes);
            let size = bytes.len();
            if in_flight.contains_key(&id) {
                // The same image is already on its way: send this copy after its ack.
                retries.push_back((now + Duration::from_millis(50), job));
                continue;
            }
            session
                .client
                .publish(
                    session.topics.sample_image(label),
                    QoS::AtLeastOnce,
                    false,
                    bytes,
                )
                .context("queueing a sample")?;
            job.attempts += 1;
            in_flight.insert(
                id,
                Flight {
                    job,
                    label: label.to_string(),
                    bytes: size,
                    deadline: now + session.timeout,
                },
            );
        }
        if in_flight.is_empty() && queue.is_empty() && retries.is_empty() {
            break;
        }
        // Sleep until an ack comes, the earliest ack deadline, or a due retry.
        let now = Instant::now();
        let mut wake = in_flight
            .values()
            .map(|f| f.deadline)
            .min()
            .unwrap_or(now + Duration::from_secs(1));
        if in_flight.len() < window {
            if let Some(at) = retries.iter().map(|(at, _)| *at).min() {
                wake = wake.min(at);
            }
        }
        match session.next_ack(wake.saturating_duration_since(now)) {
            Some(ack) if ack.command.is_none() => {
                // A sample the device refused unread (over its packet limit) is acked without an
                // id: it is the largest in flight with that label.
                let label = ack.label.clone().unwrap_or_default();
                let unread = is_too_large_for(&ack, &label)
                    .then(|| {
                        in_flight
                            .iter()
                            .filter(|(_, f)| f.label == label)
                            .max_by_key(|(_, f)| f.bytes)
                            .map(|(id, _)| id.clone())
                    })
                    .flatten();
                let Some(id) = unread.as_deref().or(ack.id.as_deref()) else {
                    continue;
                };
                let matches = in_flight
                    .get(id)
                    .is_some_and(|f| ack.label.as_deref().is_none_or(|l| l == f.label));
                if !matches {
                    continue; // another sender's sample, or an ack we already counted
                }
                let flight = in_flight.remove(id).expect("checked above");
                if is_busy(&ack) && flight.job.attempts <= args.retries {
                    let pause = Duration::from_secs(1 << (flight.job.attempts - 1).min(5));
                    bar.set_message("(device busy, backing off)");
                    retries.push_back((Instant::now() + pause, flight.job));
                } else {
                    bar.set_message("");
                    record(&mut tally, flight.job.index, outcome_of(&ack));
                }
            }
            Some(_) => {} // a command's ack
            None => {
                let now = Instant::now();
                let expired: Vec<String> = in_flight
                    .iter()
                    .filter(|(_, f)| f.deadline <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in expired {
                    let flight = in_flight.remove(&id).expect("listed above");
                    let missing = session.missing(&id);
                    if !missing.is_empty() {
                        eprintln!(
                            "{}: no ack from {}",
                            files[flight.job.index].0.display(),
                            missing.join(", ")
                        );
                    }
                    if flight.job.attempts <= args.retries {
                        retries.push_back((now, flight.job));
                    } else {
                        record(&mut tally, flight.job.index, Outcome::NoAck);
                    }
                }
            }
        }
    }
    bar.finish_and_clear();
    Ok(tally)
}
