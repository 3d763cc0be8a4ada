//! `outpost roi`: the dashboard's ROI view on the terminal. The measured
//! deflection and the inputs (saved on the dashboard, else the hub's
//! `[roi]`) come from `GET /admin/dashboard/roi`; flags override inputs;
//! the figures are computed by the same `outpost_hub::roi::compute`.

use anyhow::Context;
use outpost_hub::roi::{compute, RoiInputs};

use super::fleet::Hub;
use crate::cli::RoiArgs;
use crate::settings::BadConfig;

pub fn run(args: RoiArgs) -> anyhow::Result<()> {
    let hub = Hub {
        base: args.hub.trim_end_matches('/').to_owned(),
        token: args.token,
    };
    let view = hub.send(hub.request("GET", "/admin/dashboard/roi").call())?;
    let mut inputs: RoiInputs = serde_json::from_value(view["inputs"].clone())
        .context("the hub's ROI inputs do not parse")?;
    for (flag, slot) in [
        (args.tickets_per_month, &mut inputs.tickets_per_month),
        (args.handle_time_minutes, &mut inputs.handle_time_minutes),
        (args.agent_cost_per_hour, &mut inputs.agent_cost_per_hour),
        (args.implementation_cost, &mut inputs.implementation_cost),
    ] {
        if let Some(value) = flag {
            *slot = value;
        }
    }
    let inputs = inputs.validate().map_err(|e| BadConfig(e.to_string()))?;
    let deflection = &view["deflection"];
    let rate = deflection["rate"].as_f64().unwrap_or(0.0);
    let figures = compute(&inputs, rate);
    if args.json {
        let out = serde_json::json!({
            "inputs": inputs,
            "window_days": view["window_days"],
            "deflection": deflection,
            "figures": figures,
            "routing": view["routing"],
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let money = |x: f64| format!("{x:.2}");
    println!(
        "deflection        {:.1} %  ({} of {} answers over {} days: no hand-over, no thumbs-down)",
        100.0 * figures.deflection_rate,
        deflection["deflected"],
        deflection["answers"],
        view["window_days"],
    );
    println!(
        "inputs            {} tickets/month, {} min/ticket, {}/agent hour, {} implementation",
        inputs.tickets_per_month,
        inputs.handle_time_minutes,
        inputs.agent_cost_per_hour,
        inputs.implementation_cost
    );
    println!(
        "tickets deflected {:.0} / month",
        figures.tickets_deflected_per_month
    );
    println!(
        "hours saved       {:.1} / month",
        figures.hours_saved_per_month
    );
    println!("monthly savings   {}", money(figures.monthly_savings));
    match figures.payback_months {
        Some(m) => println!("payback           {m:.1} months"),
        None => println!("payback           never (nothing saved)"),
    }
    match figures.first_year_roi {
        Some(r) => println!("first-year ROI    {:.1} %", 100.0 * r),
        None => println!("first-year ROI    n/a (no implementation cost)"),
    }
    let routing = &view["routing"];
    let upstream = routing["upstream_answers"].as_u64().unwrap_or(0);
    let local = routing["local_answers"].as_u64().unwrap_or(0);
    if upstream + local > 0 {
        let micros = |key: &str| routing[key].as_f64().unwrap_or(0.0) / 1e6;
        println!(
            "model routing     {local} local, {upstream} upstream; upstream cost {:.4} ({:.4} an answer), local answers saved {:.4}",
            micros("upstream_cost_micros"),
            micros("cost_per_upstream_answer_micros"),
            micros("local_savings_micros"),
        );
    }
    Ok(())
}
