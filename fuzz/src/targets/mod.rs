//! Every target: its harness, generator and dictionary.

pub mod api;
pub mod image;
pub mod state;
pub mod text;

use crate::{Harness, Rng, Target};

fn stateless(f: fn(&[u8]) -> Result<(), String>) -> Box<dyn Harness> {
    Box::new(f)
}

/// Joins `n` random tokens of `parts`.
fn words(rng: &mut Rng, parts: &[&str], n: usize) -> String {
    (0..n).map(|_| *rng.pick(parts)).collect()
}

const LABEL_TOKENS: &[&str] = &[
    "app", "tier", "x.io/y", "a-b_c.d", "=", "==", "!=", "!", " in ", " notin ", "(", ")", ",",
    " ", "web", "front", "", "-", "1", "<", ">", "exists", "\\,",
];

fn gen_label(rng: &mut Rng) -> Vec<u8> {
    let n = 1 + rng.below(10);
    words(rng, LABEL_TOKENS, n).into_bytes()
}

const FIELD_TOKENS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "status.phase",
    "=",
    "==",
    "!=",
    ",",
    "\\,",
    "\\=",
    "\\\\",
    "web",
    "n1",
    "",
    " ",
    "Running",
];

fn gen_field(rng: &mut Rng) -> Vec<u8> {
    let n = 1 + rng.below(8);
    words(rng, FIELD_TOKENS, n).into_bytes()
}

const QUANTITY_TOKENS: &[&str] = &[
    "0",
    "1",
    "9",
    ".",
    "+",
    "-",
    "e",
    "E",
    "m",
    "k",
    "M",
    "G",
    "T",
    "P",
    "Ei",
    "Ki",
    "Mi",
    "Gi",
    "Ti",
    "Pi",
    "n",
    "u",
    "e3",
    "e-9",
    "E18",
    "1024",
    "999999999999999999",
];

fn gen_quantity(rng: &mut Rng) -> Vec<u8> {
    let n = 1 + rng.below(5);
    words(rng, QUANTITY_TOKENS, n).into_bytes()
}

const DURATION_TOKENS: &[&str] = &[
    "0", "1", "90", "1.5", ".5", "5.", "ns", "us", "µs", "ms", "s", "m", "h", "d", "-", "+",
    "31622400", "31622401", "8784h", "1e3", " ",
];

fn gen_duration(rng: &mut Rng) -> Vec<u8> {
    let n = 1 + rng.below(6);
    words(rng, DURATION_TOKENS, n).into_bytes()
}

/// YAML and JSON pieces for bodies and manifests.
const YAML_TOKENS: &[&str] = &[
    "apiVersion: loom.dev/v1\n",
    "apiVersion: v1\n",
    "kind: Task\n",
    "kind: Job\n",
    "kind: Service\n",
    "kind: List\n",
    "kind: Namespace\n",
    "metadata:\n  name: web\n",
    "  namespace: default\n",
    "  labels: {app: web}\n",
    "  generateName: w-\n",
    "spec:\n",
    "  image: busybox\n",
    "  replicas: 3\n",
    "  resources: {cpu: 100m, memory: 32Mi}\n",
    "  command: [sh, -c, 'true']\n",
    "  restartPolicy: Always\n",
    "  template:\n    spec:\n      image: busybox\n",
    "items:\n- kind: Task\n",
    "status: {phase: Running}\n",
    "---\n",
    "...\n",
    "&a ",
    "*a",
    "<<: *a\n",
    "!!binary ",
    "? ",
    "- ",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "'",
    ": ",
    "\n",
    "  ",
    "\t",
    "~",
    "null",
    ".inf",
    ".nan",
    "0x1F",
    "0o17",
    "1e400",
    "yes",
    "# comment\n",
    "%YAML 1.2\n",
];

fn gen_yaml(rng: &mut Rng) -> Vec<u8> {
    let n = 2 + rng.below(10);
    words(rng, YAML_TOKENS, n).into_bytes()
}

const BODY_HEADERS: &[&str] = &[
    "application/json tasks\n",
    "application/yaml tasks\n",
    "application/yaml jobs\n",
    "application/json services\n",
    "application/yaml namespaces\n",
    "application/json serviceaccounts\n",
    "application/json leases\n",
    "application/yaml roles\n",
    "application/json clusterrolebindings\n",
    "application/yaml resourcedefinitions\n",
    "application/yaml events\n",
    "application/json nodes\n",
    "application/vnd.kubernetes.protobuf namespaces\n",
    "text/plain tasks\n",
];

fn gen_body(rng: &mut Rng) -> Vec<u8> {
    let mut out = rng.pick(BODY_HEADERS).as_bytes().to_vec();
    out.extend(gen_yaml(rng));
    out
}

const PATCH_TOKENS: &[&str] = &[
    "{\"op\":\"add\",\"path\":\"/metadata/labels/x\",\"value\":\"y\"}",
    "{\"op\":\"replace\",\"path\":\"/metadata/name\",\"value\":\"other\"}",
    "{\"op\":\"replace\",\"path\":\"/metadata/uid\",\"value\":\"u\"}",
    "{\"op\":\"remove\",\"path\":\"/spec\"}",
    "{\"op\":\"copy\",\"from\":\"/spec\",\"path\":\"/metadata/annotations/a\"}",
    "{\"op\":\"move\",\"from\":\"/metadata\",\"path\":\"/spec/x\"}",
    "{\"op\":\"test\",\"path\":\"/kind\",\"value\":\"Task\"}",
    "{\"op\":\"add\",\"path\":\"/spec/command/-\",\"value\":\"x\"}",
    "\"path\":\"/~1~0/-/0\"",
    "{\"metadata\":{\"labels\":{\"a\":null}}}",
    "{\"metadata\":{\"name\":\"x\",\"namespace\":\"other\"}}",
    "{\"metadata\":{\"resourceVersion\":\"1\"}}",
    "{\"kind\":\"Job\"}",
    "{\"spec\":null}",
    "{\"status\":{\"phase\":\"Succeeded\"}}",
    "[",
    "]",
    ",",
];

const PATCH_HEADERS: &[&str] = &[
    "merge tasks\n",
    "json tasks\n",
    "apply tasks\n",
    "merge services\n",
    "json jobs\n",
    "apply namespaces\n",
    "merge leases\n",
    "json roles\n",
    "merge tasks status\n",
    "json serviceaccounts\n",
];

fn gen_patch(rng: &mut Rng) -> Vec<u8> {
    let header = *rng.pick(PATCH_HEADERS);
    let mut out = header.as_bytes().to_vec();
    if header.starts_with("json") {
        let ops: Vec<&str> = (0..1 + rng.below(4))
            .map(|_| *rng.pick(&PATCH_TOKENS[..8]))
            .collect();
        out.extend(format!("[{}]", ops.join(",")).into_bytes());
    } else if header.starts_with("apply") {
        out.extend(gen_yaml(rng));
    } else {
        out.extend(rng.pick(&PATCH_TOKENS[9..15]).as_bytes());
    }
    out
}

const LIST_TOKENS: &[&str] = &[
    "labelSelector=",
    "fieldSelector=",
    "resourceVersion=",
    "resourceVersionMatch=",
    "limit=",
    "continue=",
    "watch=true",
    "timeoutSeconds=",
    "&",
    "=",
    "%3D",
    "%2C",
    "%21",
    "%20in%20(",
    ")",
    "app",
    "web",
    "tier",
    "metadata.name",
    "spec.nodeName",
    "NotOlderThan",
    "Exact",
    "0",
    "1",
    "2",
    "999999999999",
    "-1",
    "eyJydiI6NSwic3RhcnQiOiJsb29tLmRldi90YXNrcy9kZWZhdWx0L3QxIn0",
    "%00",
    "+",
];

fn gen_list(rng: &mut Rng) -> Vec<u8> {
    let mut out = rng
        .pick(&["tasks\n", "services\n", "namespaces\n", "jobs\n"])
        .as_bytes()
        .to_vec();
    let n = 1 + rng.below(10);
    out.extend(words(rng, LIST_TOKENS, n).into_bytes());
    out
}

const DELETE_TOKENS: &[&str] = &[
    "{\"propagationPolicy\":\"Foreground\"}",
    "{\"propagationPolicy\":\"Orphan\",\"orphanDependents\":false}",
    "{\"preconditions\":{\"uid\":\"x\",\"resourceVersion\":\"1\"}}",
    "{\"gracePeriodSeconds\":-1}",
    "{\"dryRun\":[\"All\"]}",
    "\"kind\":\"DeleteOptions\",\"apiVersion\":\"v1\"",
    "9223372036854775807",
    "Background",
    "null",
];

fn gen_delete(rng: &mut Rng) -> Vec<u8> {
    let mut out = rng
        .pick(&[
            "tasks\n",
            "services\n",
            "namespaces\n",
            "jobs\n",
            "roles\n",
            "leases\n",
        ])
        .as_bytes()
        .to_vec();
    out.extend(rng.pick(&DELETE_TOKENS[..5]).as_bytes());
    out
}

const STATE_FILES: &[&str] = &[
    "task.json",
    "exit.json",
    "started.json",
    "shim.pid",
    "spec.json",
    "expires",
    "refs.json",
    "image.json",
];

const STATE_TOKENS: &[&str] = &[
    "{\"exitCode\":0,\"signal\":null,\"oomKilled\":false,\"error\":null,\"reason\":\"Completed\",\"startedAt\":\"2026-01-01T00:00:00Z\",\"finishedAt\":\"2026-01-01T00:00:01Z\"}",
    "{\"pid\":42,\"startedAt\":\"2026-01-01T00:00:00.123456789+02:00\"}",
    "{\"namespace\":\"default\",\"name\":\"web\",\"uid\":\"u\"}",
    "{\"busybox:latest\":\"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"}",
    "{\"x\":\"sha256:../../etc\"}",
    "{\"digest\":\"sha256:00\",\"entrypoint\":[],\"cmd\":[\"sh\"],\"env\":[],\"workingDir\":\"/\"}",
    "2026-01-01T00:00:00Z",
    "+262143-12-31T23:59:59Z",
    "-262143-01-01T00:00:00Z",
    "9999-12-31T23:59:60.999999999Z",
    "2147483648",
    "-1",
    "\"",
    "null",
];

fn gen_state(rng: &mut Rng) -> Vec<u8> {
    let mut out = format!("{}\n", rng.pick(STATE_FILES)).into_bytes();
    out.extend(rng.pick(STATE_TOKENS).as_bytes());
    out
}

/// Every target.
pub fn all() -> Vec<Target> {
    vec![
        Target {
            name: "api_body",
            about: "request bodies (JSON, YAML, protobuf) of every kind, admitted as dry-run creates",
            harness: api::api_body,
            generate: gen_body,
            dictionary: YAML_TOKENS,
            fixup: None,
            max_len: 16 << 10,
        },
        Target {
            name: "api_patch",
            about: "merge, JSON and apply patches of real objects, as dry runs",
            harness: api::api_patch,
            generate: gen_patch,
            dictionary: PATCH_TOKENS,
            fixup: None,
            max_len: 16 << 10,
        },
        Target {
            name: "api_list",
            about: "list parameters: label and field selectors, resourceVersion, limit, continue tokens",
            harness: api::api_list,
            generate: gen_list,
            dictionary: LIST_TOKENS,
            fixup: None,
            max_len: 4 << 10,
        },
        Target {
            name: "api_delete",
            about: "DELETE bodies (DeleteOptions) and dry-run deletes of real objects",
            harness: api::api_delete,
            generate: gen_delete,
            dictionary: DELETE_TOKENS,
            fixup: None,
            max_len: 4 << 10,
        },
        Target {
            name: "label_selector",
            about: "label selectors: parse, print, parse again",
            harness: || stateless(text::label_selector),
            generate: gen_label,
            dictionary: LABEL_TOKENS,
            fixup: None,
            max_len: 4 << 10,
        },
        Target {
            name: "field_selector",
            about: "field selectors: parse, print, parse again",
            harness: || stateless(text::field_selector),
            generate: gen_field,
            dictionary: FIELD_TOKENS,
            fixup: None,
            max_len: 4 << 10,
        },
        Target {
            name: "quantity",
            about: "quantities: parse, print, parse again, and as JSON",
            harness: || stateless(text::quantity),
            generate: gen_quantity,
            dictionary: QUANTITY_TOKENS,
            fixup: None,
            max_len: 512,
        },
        Target {
            name: "duration",
            about: "loomctl's duration flags",
            harness: || stateless(text::duration),
            generate: gen_duration,
            dictionary: DURATION_TOKENS,
            fixup: None,
            max_len: 512,
        },
        Target {
            name: "manifest",
            about: "loomctl's manifest reading: multi-document YAML and JSON, Lists",
            harness: || stateless(text::manifest),
            generate: gen_yaml,
            dictionary: YAML_TOKENS,
            fixup: None,
            max_len: 16 << 10,
        },
        Target {
            name: "image_layer",
            about: "a hostile layer tar imported by the nodelet's image store",
            harness: image::image_layer,
            generate: image::generate_layer,
            dictionary: &["../", "/", "..", ".wh.", ".wh..wh..opq", "ustar", "\u{0}"],
            fixup: Some(image::fix_tar),
            max_len: 256 << 10,
        },
        Target {
            name: "image_layout",
            about: "a hostile OCI layout tar imported by the nodelet's image store",
            harness: image::image_layout,
            generate: image::generate_layout,
            dictionary: &[
                "../",
                "/",
                "..",
                "index.json",
                "blobs/sha256/",
                "sha256:",
                "\u{0}",
            ],
            fixup: Some(image::fix_tar),
            max_len: 256 << 10,
        },
        Target {
            name: "nodelet_state",
            about: "the nodelet's state files as read back after a restart",
            harness: state::nodelet_state,
            generate: gen_state,
            dictionary: STATE_TOKENS,
            fixup: None,
            max_len: 16 << 10,
        },
    ]
}
