use super::*;

#[test]
fn the_default_file_is_valid_and_binds_loopback() {
    let config = RawDeviceConfig::from_toml(DEFAULT_TOML, "default")
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(config.server.host, IpAddr::from([127, 0, 0, 1]));
    assert_eq!(config.engine.parallel, 4);
    assert!(config.server.api_key.is_none());
}

#[test]
fn every_problem_is_reported_at_once() {
    let raw = RawDeviceConfig::from_toml(
        "[engine]\nthreads = 0\nflash_attn = \"maybe\"\n[server]\nhost = \"kiosk\"\nport = 70000\n",
        "t",
    )
    .unwrap();
    let err = raw.validate().unwrap_err();
    assert_eq!(err.problems.len(), 4, "{err}");
    assert!(err.to_string().contains("engine.threads = 0"));
}

#[test]
fn an_unknown_key_is_an_error_naming_it() {
    let err = RawDeviceConfig::from_toml("[engine]\nthread = 2\n", "device.toml").unwrap_err();
    assert!(err.to_string().contains("thread"), "{err}");
}

#[test]
fn an_enabled_agent_needs_a_device_and_a_hub_key() {
    let raw = RawDeviceConfig::from_toml(
        "[agent]\nenabled = true\nfleet = \"bad fleet\"\nbackoff_max_s = 0\n",
        "t",
    )
    .unwrap();
    let err = raw.validate().unwrap_err().to_string();
    for needle in [
        "agent.device",
        "agent.hub_key",
        "agent.fleet",
        "agent.backoff_max_s",
    ] {
        assert!(err.contains(needle), "{needle} missing in {err}");
    }
    let raw = RawDeviceConfig::from_toml(
        "[agent]\nenabled = true\ndevice = \"kiosk-1\"\nhub_key = \"ab\"\n",
        "t",
    )
    .unwrap();
    let agent = raw.validate().unwrap().agent.unwrap();
    assert_eq!(agent.device.as_str(), "kiosk-1");
    assert_eq!(agent.max_packet_bytes, 2 << 20);
    assert_eq!(agent.max_generation_jump, 1_000_000);
    let raw = RawDeviceConfig::from_toml(
        "[agent]\nenabled = true\ndevice = \"kiosk-1\"\nhub_key = \"ab\"\n\
         max_generation_jump = 0\n",
        "t",
    )
    .unwrap();
    let err = raw.validate().unwrap_err().to_string();
    assert!(err.contains("agent.max_generation_jump = 0"), "{err}");
}

#[test]
fn defaults_keep_customer_text_redacted_admin_on_loopback_and_two_adapters() {
    let config = RawDeviceConfig::from_toml(DEFAULT_TOML, "default")
        .unwrap()
        .validate()
        .unwrap();
    assert!(config.server.admin_key.is_none());
    assert!(config.server.allowed_hosts.is_empty());
    assert!(config.answer.feedback_keep_raw.is_zero());
    assert!(!config.answer.feedback_share_text);
    assert_eq!(
        config.answer.feedback_max_rows,
        crate::feedback::DEFAULT_MAX_ROWS
    );
    assert_eq!(config.engine.max_loaded_adapters, 2);
}

#[test]
fn sharing_feedback_text_is_an_opt_in_that_an_overlay_can_give() {
    let base = RawDeviceConfig::from_toml(DEFAULT_TOML, "default").unwrap();
    let opt_in = RawDeviceConfig::from_toml("[answer]\nfeedback_share_text = true\n", "t").unwrap();
    let config = base.clone().overlay(opt_in).validate().unwrap();
    assert!(config.answer.feedback_share_text);
    let silent = RawDeviceConfig::from_toml("[answer]\n", "t").unwrap();
    assert!(
        !base
            .overlay(silent)
            .validate()
            .unwrap()
            .answer
            .feedback_share_text
    );
    let err =
        RawDeviceConfig::from_toml("[answer]\nfeedback_share_text = \"yes\"\n", "t").unwrap_err();
    assert!(err.to_string().contains("feedback_share_text"), "{err}");
}

#[test]
fn allowed_hosts_are_normalised_and_wildcards_refused() {
    let raw = RawDeviceConfig::from_toml(
        "[server]\nallowed_hosts = [\"Kiosk.Shop.Example.\", \"*.example\", \"a:80\"]\n",
        "t",
    )
    .unwrap();
    let err = raw.validate().unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
    let raw =
        RawDeviceConfig::from_toml("[server]\nallowed_hosts = [\"Kiosk.Shop.Example.\"]\n", "t")
            .unwrap();
    let config = raw.validate().unwrap();
    assert_eq!(config.server.allowed_hosts, ["kiosk.shop.example"]);
}

#[test]
fn prefix_reuse_off_disables_the_ram_cache_and_every_shared_prefix() {
    let engine = |toml: &str| {
        RawDeviceConfig::from_toml(toml, "t")
            .unwrap()
            .validate()
            .unwrap()
            .engine
            .engine_config(PathBuf::from("m.gguf"), None)
    };
    let on = engine("[engine]\nprefix_cache_mb = 64\n");
    assert_eq!(on.prefix_cache_bytes, 64 << 20);
    assert_eq!(on.min_prefix_tokens, 32);
    let off = engine("[engine]\nprefix_cache_mb = 64\nprefix_reuse = false\n");
    assert_eq!(off.prefix_cache_bytes, 0);
    assert_eq!(off.min_prefix_tokens, usize::MAX);
}

#[test]
fn a_later_layer_overrides_an_earlier_one() {
    let file = RawDeviceConfig::from_toml("[engine]\nthreads = 3\nparallel = 2\n", "f").unwrap();
    let flags = RawDeviceConfig::from_toml("[engine]\nthreads = 1\n", "flags").unwrap();
    let config = file.overlay(flags).validate().unwrap();
    assert_eq!(config.engine.threads, 1);
    assert_eq!(config.engine.parallel, 2);
}
