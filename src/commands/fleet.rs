//! `outpost fleet`: a thin client of the hub's admin API, so an operator
//! can publish, assign and watch without writing HTTP by hand.

use std::io::Read;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::cli::{FleetArgs, FleetCommand};
use crate::settings::BadConfig;

mod rollout;
mod tune;

/// `KIND:NAME:VERSION` as the admin API's artifact key.
pub(crate) fn artifact_key(text: &str) -> Result<Value, BadConfig> {
    match text.splitn(3, ':').collect::<Vec<_>>()[..] {
        [kind, name, version] => Ok(json!({"kind": kind, "name": name, "version": version})),
        _ => Err(BadConfig(format!(
            "{text:?}: write artifacts as KIND:NAME:VERSION, e.g. prompt-set:kiosk:3"
        ))),
    }
}

pub fn run(args: FleetArgs) -> anyhow::Result<()> {
    let hub = Hub {
        base: args.hub.trim_end_matches('/').to_owned(),
        token: args.token,
    };
    let reply = match args.command {
        FleetCommand::Publish {
            kind,
            name,
            version,
            base_model,
            file,
        } => {
            let mut query = vec![("kind", kind), ("name", name), ("version", version)];
            if let Some(base) = base_model {
                query.push(("base_model", base));
            }
            let body = std::fs::File::open(&file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            let mut request = hub.request("POST", "/admin/artifacts");
            for (key, value) in &query {
                request = request.query(key, value);
            }
            hub.send(request.send(body))?
        }
        FleetCommand::Assign {
            device,
            tag,
            rollback,
            artifacts,
        } => {
            let artifacts = artifacts
                .iter()
                .map(|a| artifact_key(a))
                .collect::<Result<Vec<_>, _>>()?;
            let mut body = json!({ "artifacts": artifacts, "rollback": rollback });
            match (device, tag) {
                (Some(d), _) => body["device"] = json!(d),
                (None, Some(t)) => body["tag"] = json!(t),
                (None, None) => bail!(BadConfig("give --device or --tag".into())),
            }
            hub.send(hub.request("POST", "/admin/assign").send_json(body))?
        }
        FleetCommand::Tag { device, tags } => hub.send(
            hub.request("PUT", &format!("/admin/devices/{device}/tags"))
                .send_json(json!({ "tags": tags })),
        )?,
        FleetCommand::Devices => hub.send(hub.request("GET", "/admin/devices").call())?,
        FleetCommand::Telemetry { device, limit } => {
            let mut request = hub
                .request("GET", "/admin/telemetry")
                .query("limit", &limit.to_string());
            if let Some(d) = &device {
                request = request.query("device", d);
            }
            hub.send(request.call())?
        }
        FleetCommand::Rollout(command) => return rollout::rollout(&hub, command),
        FleetCommand::Eval(command) => return rollout::eval(&hub, command),
        FleetCommand::Tune(command) => return tune::run(&hub, command),
        FleetCommand::Labels => hub.send(hub.request("GET", "/admin/labels").call())?,
    };
    println!("{}", serde_json::to_string_pretty(&reply)?);
    Ok(())
}

/// A hub's operator API, with the bearer token when one is given.
pub(crate) struct Hub {
    pub(crate) base: String,
    pub(crate) token: Option<String>,
}

impl Hub {
    pub(crate) fn request(&self, method: &str, path: &str) -> ureq::Request {
        let request = ureq::request(method, &format!("{}{path}", self.base));
        match &self.token {
            Some(t) => request.set("Authorization", &format!("Bearer {t}")),
            None => request,
        }
    }

    /// The JSON reply, or the hub's error message.
    pub(crate) fn send(
        &self,
        result: Result<ureq::Response, ureq::Error>,
    ) -> anyhow::Result<Value> {
        match result {
            Ok(response) => Ok(response.into_json()?),
            Err(ureq::Error::Status(code, response)) => {
                let mut text = String::new();
                let _ = response
                    .into_reader()
                    .take(64 * 1024)
                    .read_to_string(&mut text);
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                bail!("the hub answered {code}: {message}")
            }
            Err(e) => Err(e).with_context(|| format!("cannot reach the hub at {}", self.base)),
        }
    }
}
