//! `ambit exec <pod> -- <command>`: runs a command inside a pod's network namespace (with the
//! pod's `/etc/hosts`), attached to this terminal, and exits with its status.

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};

use crate::lab::netns::command_in;
use crate::lab::state::LabDir;

pub fn exec(dir: &LabDir, pod: &str, command: &[String]) -> Result<ExitCode> {
    let state = dir.load()?;
    let pod = state.find_pod(pod).map_err(anyhow::Error::msg)?;
    let Some((program, args)) = command.split_first() else {
        bail!(
            "give a command after `--`, e.g. `ambit exec {} -- ip addr`",
            pod.name
        );
    };
    // `ambit` inside a pod means this very binary, wherever it is installed.
    let program = if program == "ambit" {
        std::env::current_exe().context("locating the ambit binary")?
    } else {
        program.into()
    };
    let status = command_in(&pod.netns, &program)
        .args(args)
        .env("POD_NAME", &pod.name)
        .env("POD_NAMESPACE", &pod.namespace)
        .env("POD_IP", pod.ip.to_string())
        .status()
        .with_context(|| {
            format!(
                "running {} in pod {}/{}",
                program.display(),
                pod.namespace,
                pod.name
            )
        })?;
    // A signal-terminated command reports 128 + signal, as a shell would.
    let code = status
        .code()
        .or_else(|| std::os::unix::process::ExitStatusExt::signal(&status).map(|s| 128 + s))
        .unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
