//! Option references as real packages ship them: every option is its own
//! section with its name in the heading path, and nothing else is.
//!
//! The documents are real: systemd's journald.conf(5) and logind.conf(5)
//! (DocBook's `.PP`/`.RS` layout) and e2fsprogs' ext4(5) (`.TP`, with
//! terms that share their line with the definition), rendered by `man`
//! (`configs/kb/systemd/`, `fixtures/ext4.5.txt`); QEMU's Sphinx manual
//! page for qemu-nbd, `<dl>` per option (`fixtures/qemu-nbd.html`).

use outpost_kb::document::{parse, Document, Format, Section};

const JOURNALD: &str = include_str!("../../configs/kb/systemd/journald.conf.txt");
const LOGIND: &str = include_str!("../../configs/kb/systemd/logind.conf.txt");
const EXT4: &str = include_str!("fixtures/ext4.5.txt");
const QEMU_NBD: &str = include_str!("fixtures/qemu-nbd.html");

fn read(format: Format, text: &str) -> Document {
    parse(format, text.as_bytes()).expect("a real document parses")
}

/// The one section whose innermost heading is `term`.
fn section<'d>(doc: &'d Document, term: &str) -> &'d Section {
    let found: Vec<&Section> = doc
        .sections
        .iter()
        .filter(|s| s.heading_path.last().map(String::as_str) == Some(term))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{term:?} heads {} sections; headings: {:#?}",
        found.len(),
        doc.sections
            .iter()
            .map(|s| s.heading_path.join(" > "))
            .collect::<Vec<_>>()
    );
    found[0]
}

fn path(section: &Section) -> Vec<&str> {
    section.heading_path.iter().map(String::as_str).collect()
}

#[test]
fn journald_options_are_one_section_each_under_options() {
    let doc = read(Format::Text, JOURNALD);
    assert_eq!(doc.title.as_deref(), Some("journald.conf(5)"));

    let storage = section(&doc, "Storage=");
    assert_eq!(path(storage), ["journald.conf(5)", "OPTIONS", "Storage="]);
    assert!(storage.paragraphs[0].starts_with("Controls where to store journal data."));
    // The option's later paragraphs stay with it.
    assert!(
        storage
            .paragraphs
            .iter()
            .any(|p| p.starts_with("Note that journald will initially use volatile storage")),
        "{:#?}",
        storage.paragraphs
    );

    // A term of two lines: all eight size options share the definition.
    let sizes = section(
        &doc,
        "SystemMaxUse=, SystemKeepFree=, SystemMaxFileSize=, SystemMaxFiles=, \
         RuntimeMaxUse=, RuntimeKeepFree=, RuntimeMaxFileSize=, RuntimeMaxFiles=",
    );
    assert!(sizes.paragraphs[0].starts_with("Enforce size limits on the journal files stored."));

    for option in [
        "Compress=",
        "Seal=",
        "SplitMode=",
        "MaxRetentionSec=",
        "ReadKMsg=",
    ] {
        let s = section(&doc, option);
        assert_eq!(path(s)[..2], ["journald.conf(5)", "OPTIONS"], "{option}");
        // No option's text runs into the next option's.
        for p in &s.paragraphs {
            assert!(!p.contains("Compress= Can take"), "{option}: {p}");
        }
    }

    // The sentence before the first option is the section's own, not an
    // option's.
    let options = doc
        .sections
        .iter()
        .find(|s| path(s) == ["journald.conf(5)", "OPTIONS"])
        .expect("OPTIONS has its own paragraph");
    assert_eq!(
        options.paragraphs,
        ["All options are configured in the [Journal] section:"]
    );

    // The page header and footer are not content.
    for s in &doc.sections {
        for p in &s.paragraphs {
            assert!(!p.contains("JOURNALD.CONF(5)"), "{p}");
        }
    }
}

#[test]
fn a_paragraph_after_a_definition_list_belongs_to_the_section_again() {
    let doc = read(Format::Text, JOURNALD);
    // FORWARDING TO TRADITIONAL SYSLOG DAEMONS follows OPTIONS: its
    // paragraphs are not under the last option.
    let forwarding = doc
        .sections
        .iter()
        .find(|s| {
            path(s)
                == [
                    "journald.conf(5)",
                    "FORWARDING TO TRADITIONAL SYSLOG DAEMONS",
                ]
        })
        .expect("the section after OPTIONS");
    assert!(forwarding.paragraphs[0].starts_with("Journal events can be transferred"));
}

#[test]
fn logind_eleven_key_options_share_one_definition() {
    let doc = read(Format::Text, LOGIND);
    let keys = doc
        .sections
        .iter()
        .filter(|s| {
            s.heading_path
                .last()
                .is_some_and(|h| h.starts_with("HandlePowerKey=, HandlePowerKeyLongPress="))
        })
        .collect::<Vec<_>>();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].heading_path[2].ends_with("HandleLidSwitchDocked="));
    assert!(keys[0]
        .paragraphs
        .iter()
        .any(|p| p.contains("HandleLidSwitch= defaults to \"suspend\".")));
    let vts = section(&doc, "NAutoVTs=");
    assert_eq!(path(vts), ["logind.conf(5)", "OPTIONS", "NAutoVTs="]);
}

#[test]
fn ext4_tp_options_inline_and_wrapped_are_one_section_each() {
    let doc = read(Format::Text, EXT4);
    assert_eq!(doc.title.as_deref(), Some("ext4(5)"));

    // `debug  Print debugging info upon each (re)mount.`: the term shares
    // its one line with the definition.
    let debug = section(&doc, "debug");
    assert_eq!(
        path(debug),
        [
            "ext4(5)",
            "MOUNT OPTIONS",
            "Mount options for ext2",
            "debug"
        ]
    );
    assert_eq!(
        debug.paragraphs,
        ["Print debugging info upon each (re)mount."]
    );

    let acl = section(&doc, "acl|noacl");
    assert_eq!(
        acl.paragraphs,
        ["Support POSIX Access Control Lists (or not). See the acl(5) manual page."]
    );

    // An example deeper inside a definition stays in it.
    let df = section(&doc, "bsddf|minixdf");
    assert!(df
        .paragraphs
        .iter()
        .any(|p| p == "% mount /k -o minixdf; df /k; umount /k"));

    // The next option starts a new section rather than joining the example.
    let check = section(&doc, "check=none or nocheck");
    assert!(check.paragraphs[0].starts_with("No checking is done at mount time."));
}

#[test]
fn sphinx_dl_options_are_one_section_each_with_the_whole_term() {
    let doc = read(Format::Html, QEMU_NBD);
    let port = section(&doc, "-p, --port=PORT");
    assert_eq!(
        path(port)[1..],
        ["Options", "-p, --port=PORT"],
        "{:?}",
        path(port)
    );
    assert_eq!(
        port.paragraphs,
        ["TCP port to listen on as a server, or connect to as a client (default 10809)."]
    );
    let bind = section(&doc, "-b, --bind=IFACE");
    assert!(bind.paragraphs[0].contains("(default 0.0.0.0)"));
    // After the options, the Examples section is not under the last option.
    let examples = doc
        .sections
        .iter()
        .find(|s| s.heading_path.last().map(String::as_str) == Some("Examples"))
        .expect("Examples");
    assert_eq!(
        examples.heading_path.len(),
        2,
        "{:?}",
        examples.heading_path
    );
}

#[test]
fn markdown_definition_lists_are_terms() {
    let doc = read(
        Format::Markdown,
        "# Service\n\n## Options\n\nEvery option goes in `[Main]`.\n\n\
         `Port=`\n: The port to listen on. Defaults to 8080.\n\n\
         `Bind=`\n`Listen=`\n: The address to bind.\n\nThe end of the options.\n",
    );
    let port = section(&doc, "Port=");
    assert_eq!(path(port), ["Service", "Options", "Port="]);
    assert_eq!(
        port.paragraphs,
        ["The port to listen on. Defaults to 8080."]
    );
    // Two term lines are one title in CommonMark's extension.
    assert_eq!(
        section(&doc, "Bind= Listen=").paragraphs,
        ["The address to bind."]
    );
    let after: Vec<_> = doc
        .sections
        .iter()
        .filter(|s| path(s) == ["Service", "Options"])
        .collect();
    assert_eq!(after.len(), 2, "before and after the list");
    assert_eq!(after[1].paragraphs, ["The end of the options."]);
}

#[test]
fn html_terms_without_definitions_between_share_a_heading() {
    let doc = read(
        Format::Html,
        "<h1>T</h1><dl><dt>a</dt><dt>b</dt><dd>both</dd><dt>c</dt><dd>only c</dd></dl><p>after</p>",
    );
    assert_eq!(section(&doc, "a, b").paragraphs, ["both"]);
    assert_eq!(section(&doc, "c").paragraphs, ["only c"]);
    assert_eq!(doc.sections.last().unwrap().heading_path, ["T"]);
}

#[test]
fn plain_paragraphs_and_bullets_are_not_terms() {
    let doc = read(
        Format::Text,
        "Guide\n\nA paragraph that wraps\nonto a second line.\n\n  - a bullet that\n    wraps deeper\n\n\
         1. a numbered step\n   that wraps\n",
    );
    assert_eq!(doc.sections.len(), 1, "{:#?}", doc.sections);
    assert_eq!(
        doc.sections[0].paragraphs,
        [
            "A paragraph that wraps onto a second line.",
            "- a bullet that wraps deeper",
            "1. a numbered step that wraps"
        ]
    );
}
