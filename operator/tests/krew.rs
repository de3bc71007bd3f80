//! The krew manifest of `kubectl cellstack` (krew/cellstack.yaml): `krew/package.sh` packages the
//! built plugin, krew's own `validate-krew-manifest` accepts the manifest it writes, and krew
//! installs the plugin from it offline (`--archive`), after which the installed plugin runs. An
//! archive that does not match the manifest's sha256 is refused.

use std::process::Command;

use anyhow::{Context as _, ensure};

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "{cmd:?} failed: {text}");
    Ok(text)
}

#[test]
fn the_packaged_manifest_validates_and_installs_offline() -> anyhow::Result<()> {
    let (krew, validate) = cellstack_testkit::krew()?;
    let root = cellstack_testkit::repo_root();
    let dir = std::env::temp_dir().join(cellstack_testkit::unique_name("krew"));
    let out = dir.join("release");
    run(Command::new(root.join("krew/package.sh"))
        .arg(&out)
        .arg(env!("CARGO_BIN_EXE_kubectl-cellstack")))?;
    let manifest = out.join("cellstack.yaml");
    let archive = out.join("kubectl-cellstack_linux_amd64.tar.gz");
    let text = std::fs::read_to_string(&manifest)?;
    ensure!(
        text.contains(&format!("version: v{}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    run(Command::new(&validate)
        .arg("-manifest")
        .arg(&manifest)
        .arg("-skip-install"))?;

    let krew_root = dir.join("krew");
    let installed = run(Command::new(&krew)
        .args(["install", "--manifest"])
        .arg(&manifest)
        .arg("--archive")
        .arg(&archive)
        .env("KREW_ROOT", &krew_root)
        .env("KREW_OS", "linux")
        .env("KREW_ARCH", "amd64"))?;
    let plugin = krew_root.join("bin/kubectl-cellstack");
    let version = run(Command::new(&plugin).arg("--version"))
        .with_context(|| format!("the installed plugin does not run; krew said: {installed}"))?;
    ensure!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");

    // Another archive under the same manifest: krew checks the sha256 and refuses it.
    let tampered = dir.join("tampered.tar.gz");
    let mut bytes = std::fs::read(&archive)?;
    bytes.extend_from_slice(b"tampered");
    std::fs::write(&tampered, bytes)?;
    let refused = Command::new(&krew)
        .args(["install", "--manifest"])
        .arg(&manifest)
        .arg("--archive")
        .arg(&tampered)
        .env("KREW_ROOT", dir.join("krew-2"))
        .output()?;
    let said = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && said.contains("checksum does not match"),
        "krew did not refuse an archive whose sha256 the manifest does not name: {said}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
