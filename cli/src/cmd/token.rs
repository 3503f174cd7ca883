//! `wardctl token create`.

use wardmesh_proto::operator::{CreateJoinTokenRequest, CreateJoinTokenResponse};
use wardmesh_proto::paths;

use crate::args::{Global, Output, TokenCommand};
use crate::client::Client;
use crate::output::rfc3339;

pub async fn run(g: &Global, c: TokenCommand) -> anyhow::Result<()> {
    match c {
        TokenCommand::Create { id, ttl_seconds } => {
            let client = Client::new(g)?;
            let resp: CreateJoinTokenResponse = client
                .post(
                    paths::JOIN_TOKENS,
                    &CreateJoinTokenRequest {
                        spiffe_id: id,
                        ttl_seconds: Some(ttl_seconds),
                    },
                )
                .await?;
            match g.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&resp)?),
                Output::Table => {
                    println!("{}", resp.token);
                    eprintln!(
                        "join token for {} (single use, expires {}); start the agent with WARDMESH_JOIN_TOKEN=<token>",
                        resp.spiffe_id,
                        rfc3339(resp.expires_at)
                    );
                }
            }
            Ok(())
        }
    }
}
