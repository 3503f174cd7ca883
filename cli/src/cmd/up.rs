//! `wardctl up`: placeholder until the agent API lands.
use crate::args::{Global, UpArgs};
pub async fn run(_g: &Global, _a: UpArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
