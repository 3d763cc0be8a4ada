//! The hub's workers run this binary's own subcommands in child processes
//! (`outpost eval run`, `outpost tune …`): the hub outlives whatever a
//! model does, and a cancel is a killed process, which frees every byte
//! the model held. This runs one such child to its end or its cancel.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// How often a running child is checked for a cancel.
const POLL: Duration = Duration::from_millis(200);

/// Runs `command` with stderr (and stdout, line by line, after `on_line`
/// has seen it) appended to `log`; kills it once `cancel` is set.
pub fn run(
    mut command: Command,
    log: &Path,
    cancel: &AtomicBool,
    mut on_line: impl FnMut(&str),
) -> Result<ExitStatus, String> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let err = file
        .try_clone()
        .map_err(|e| format!("cannot share {}: {e}", log.display()))?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", command.get_program()))?;
    let stdout = child.stdout.take().ok_or("the child has no stdout")?;
    let (tx, rx) = mpsc::channel();
    // A reader thread: reading blocks, and the cancel must not wait on it.
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut file = file;
    let mut take = |line: String| {
        on_line(&line);
        let _ = writeln!(file, "{line}");
    };
    let status = loop {
        if cancel.load(Ordering::SeqCst) {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            return Err("cancelled".into());
        }
        match rx.recv_timeout(POLL) {
            Ok(line) => {
                take(line);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for the child: {e}")),
        }
    };
    let _ = reader.join();
    for line in rx.try_iter() {
        take(line);
    }
    Ok(status)
}

/// The last `n` lines of `log`, joined, for an error message.
pub fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_caller_and_the_log_and_a_cancel_kills() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("child.log");
        let mut command = Command::new("sh");
        command.args(["-c", "echo one; echo two >&2; echo three"]);
        let mut seen = Vec::new();
        let status = run(command, &log, &AtomicBool::new(false), |l| {
            seen.push(l.to_owned())
        })
        .expect("runs");
        assert!(status.success());
        assert_eq!(seen, ["one", "three"]);
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(text.contains("two") && text.contains("three"), "{text}");

        let mut sleeper = Command::new("sleep");
        sleeper.arg("30");
        let started = std::time::Instant::now();
        let cancel = AtomicBool::new(true);
        assert!(run(sleeper, &log, &cancel, |_| {}).is_err());
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
