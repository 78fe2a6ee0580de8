//! `system.run`: an allowlisted program, run directly (argv, no shell) with a timeout and capped
//! output. Admin only.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};

use crate::config::SystemRunSection;

pub use claw_api::node::{SystemRunOutput, SystemRunParams};

/// Why `system.run` refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SystemRunError {
    /// Malformed params.
    #[error("{0}")]
    Invalid(String),
    /// The program is not on the allowlist.
    #[error("{0}")]
    NotAllowed(String),
    /// The program could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Reads `stream` to the end, keeping the first `cap` bytes; says whether it cut.
async fn read_capped(stream: Option<impl AsyncRead + Unpin>, cap: usize) -> (Vec<u8>, bool) {
    let Some(mut stream) = stream else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    let mut cut = false;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                cut |= n > room;
            }
        }
    }
    (kept, cut)
}

/// Runs `params` under `section`'s allowlist and limits.
pub async fn run(
    section: &SystemRunSection,
    params: SystemRunParams,
) -> Result<SystemRunOutput, SystemRunError> {
    let Some(program) = params.argv.first() else {
        return Err(SystemRunError::Invalid(
            "argv must name a program".to_owned(),
        ));
    };
    if params.argv.len() > 256
        || params
            .argv
            .iter()
            .any(|a| a.len() > 8192 || a.contains('\0'))
    {
        return Err(SystemRunError::Invalid(
            "argv: at most 256 arguments of 8 KiB, no NUL".to_owned(),
        ));
    }
    if !section.allowlist.iter().any(|allowed| allowed == program) {
        return Err(SystemRunError::NotAllowed(format!(
            "{program:?} is not on this node's system.run allowlist (system_run.allowlist in config.toml)"
        )));
    }
    let timeout = match params.timeout_secs {
        Some(0) => {
            return Err(SystemRunError::Invalid(
                "timeout_secs must be at least 1".into(),
            ));
        }
        Some(secs) => secs.min(section.max_timeout_secs),
        None => section.max_timeout_secs,
    };
    let mut child = tokio::process::Command::new(program)
        .args(&params.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SystemRunError::Spawn {
            program: program.clone(),
            source,
        })?;
    let cap = section.max_output_bytes;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let finished = async {
        let ((out, out_cut), (err, err_cut), status) = tokio::join!(
            read_capped(stdout, cap),
            read_capped(stderr, cap),
            child.wait()
        );
        (
            out,
            err,
            out_cut || err_cut,
            status.ok().and_then(|s| s.code()),
        )
    };
    let (stdout, stderr, truncated, exit_code, timed_out) =
        match tokio::time::timeout(Duration::from_secs(timeout), finished).await {
            Ok((out, err, cut, code)) => (out, err, cut, code, false),
            Err(_) => (Vec::new(), Vec::new(), false, None, true),
        };
    Ok(SystemRunOutput {
        exit_code,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        truncated,
        timed_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(allow: &[&str]) -> SystemRunSection {
        SystemRunSection {
            allowlist: allow.iter().map(|s| (*s).to_owned()).collect(),
            max_timeout_secs: 5,
            max_output_bytes: 16,
        }
    }

    fn params(argv: &[&str], timeout_secs: Option<u64>) -> SystemRunParams {
        SystemRunParams {
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            timeout_secs,
        }
    }

    #[tokio::test]
    async fn runs_allowlisted_programs_with_capped_output() {
        let sh = section(&["/bin/sh"]);
        let out = run(
            &sh,
            params(
                &["/bin/sh", "-c", "echo hello; echo oops >&2; exit 3"],
                None,
            ),
        )
        .await
        .unwrap();
        assert_eq!(out.exit_code, Some(3));
        assert_eq!(out.stdout, "hello\n");
        assert_eq!(out.stderr, "oops\n");
        assert!(!out.truncated && !out.timed_out);
        let long = run(&sh, params(&["/bin/sh", "-c", "seq 1 1000"], None))
            .await
            .unwrap();
        assert_eq!(long.stdout.len(), 16);
        assert!(long.truncated);
    }

    #[tokio::test]
    async fn refuses_programs_off_the_list_and_kills_at_the_timeout() {
        let err = run(
            &section(&["/bin/true"]),
            params(&["/bin/sh", "-c", "id"], None),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, SystemRunError::NotAllowed(_)), "{err}");
        let err = run(
            &section(&["/nonexistent/tool"]),
            params(&["/nonexistent/tool"], None),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, SystemRunError::Spawn { .. }), "{err}");
        let started = std::time::Instant::now();
        let out = run(
            &section(&["/bin/sleep"]),
            params(&["/bin/sleep", "30"], Some(1)),
        )
        .await
        .unwrap();
        assert!(out.timed_out && out.exit_code.is_none());
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
