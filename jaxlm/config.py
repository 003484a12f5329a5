"""The one definition of every jaxlm option, with its meaning.

Config files in `configs/` start from `base_config()` and change values; they never add keys, so a
typo on the command line (`--config.train.lrr=1`) is an error rather than a silently ignored option.
The config is read here and in the entry points only; everything below them receives plain values.
"""

import dataclasses

import ml_collections

# Model options of how a model runs, not what its parameters mean: a trained run may be evaluated,
# sampled, exported or finetuned with others. Other model.* and tokenizer options are fixed by it.
RUNTIME_MODEL_OPTIONS = ("model.dropout", "model.dtype", "model.remat", "model.attention_impl",
                         "model.scan_layers")
TOKENIZER_OPTIONS = ("data.tokenizer", "data.vocab_size", "data.sp_model_type",
                     "data.separate_vocab", "data.target_vocab_size")
# Options of a run's task, not of its pretrained body: a finetune sets its own (a classification
# finetune of a masked-LM run gets a new head), whatever the run it starts from had.
TASK_OPTIONS = ("model.head", "model.num_labels")


def fixed_by_checkpoint(key: str) -> bool:
  """Whether the option `key` ("section.name") is fixed by a trained run's parameters."""
  return (key.startswith("model.") and key not in RUNTIME_MODEL_OPTIONS) or key in TOKENIZER_OPTIONS


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Finetuning: start from the parameters of this pretrained run (its workdir, or a checkpoint
  # directory in it). The architecture and tokenizer come from there; the optimizer, schedule and
  # step counter start afresh. "" trains from scratch.
  c.init_from = ""
  # Checkpoint step of init_from to start from; -1 = its latest.
  c.init_step = -1

  c.data = _data_options()
  c.model = _model_options()
  c.train = _train_options()
  c.eval = _eval_options()
  c.checkpoint = _checkpoint_options()
  c.mesh = _mesh_options()
  return c


def _data_options() -> ml_collections.ConfigDict:
  """The `data.*` options."""
  d = ml_collections.ConfigDict()
  # Where text comes from: "stdlib" (this Python's standard library sources, built in), "files"
  # (data.path: a .txt/.jsonl/.jsonl.gz/.parquet file, a directory, or a glob), "tfds" (a TFDS
  # name), "hf" (a Hugging Face `datasets` hub name or local directory, streamed), "task" (a
  # built-in prompt/completion task, e.g. "pyfunc_names", or a gettext translation task,
  # "gettext_en_de", _fr, _es, _it, _ru, _sv: data/translation_tasks.py; a labelled one for BERT:
  # "docstring_package", "python_syntax", "python_tags": data/label_tasks.py) or "prepared" (a directory
  # of `python -m jaxlm.prepare`, read as token shards; or several, weighted, in data.mixture).
  d.source = "stdlib"
  # File, directory or glob for source="files"; dataset or task name for "tfds"/"hf"/"task"; the
  # prepared directory for "prepared"; "" for "stdlib".
  d.path = ""
  # data.source=prepared only: several prepared directories, mixed by weight, as
  # ((name, directory, weight), ...), e.g. (("web", "/p/web", 0.8), ("code", "/p/code", 0.2)).
  # Every row of a batch is drawn from one source, deterministically, so that each source's share
  # of the rows drawn so far stays within one row of its weight's; weights are normalised. Names
  # label per-source metrics. All sources must share one tokenizer (prepare the second with
  # data.tokenizer_file set to the first's DIR/tokenizer.json). () reads data.path alone.
  d.mixture = ()
  # Weights that change during training: ((step, (weight, ...)), ...), one weight per source of
  # data.mixture, in force from that step on (the batch of step `step` + 1 is the first drawn so).
  d.mixture_stages = ()
  # Characters of training text the tokenizer trains on: a seeded sample of whole documents (see
  # data/tokenizer_sample.py); 0 = all of it. A corpus within this trains on all of it, in order.
  d.tokenizer_sample_chars = 100_000_000
  # A tokenizer.json to use instead of training one (a prepared directory's, or a run's workdir).
  d.tokenizer_file = ""
  _add_format_options(d)
  return d


def _add_format_options(d: ml_collections.ConfigDict) -> None:
  """The `data.*` options of what a record holds and how it becomes rows, added to `d` in order."""
  # "text" (documents), "prompt_completion" (JSONL records {"prompt", "completion"}; the loss covers
  # the completion only), "classification" (JSONL {"text", "label"}, optionally "text_pair"; a
  # label is a string or an integer), "tagging" (JSONL {"tokens": [words], "tags": [BIO tags]}),
  # "chat" (JSONL {"messages": [{"role", "content"}, ...]}, or data.source=task with data.path
  # TASK_chat; rendered with data.chat_template, the loss on the assistant turns only),
  # "seq2seq" (encoder-decoder: JSONL {"source", "target"}, or prompt/completion records read as
  # source/target, or a built-in translation task; source + EOS in the encoder row of
  # data.seq_len tokens, target + EOS in the decoder row of data.target_len; see data/seq2seq.py)
  # or "auto": decided by the built-in task, or by the fields of the first JSONL record, else text.
  d.format = "auto"
  # Decoder tokens per row of an encoder-decoder run (seq2seq targets, or span corruption's); 0 =
  # data.seq_len for seq2seq data, for text derived by span_corruption.target_len_for.
  d.target_len = 0
  # Sentinel tokens <extra_id_0> ... of a SentencePiece tokenizer trained for an encoder-decoder
  # run (T5 has 100): span corruption replaces the k-th noise span of a document by sentinel k.
  d.num_sentinels = 100
  # Encdec seq2seq data only: two SentencePiece models, the encoder's trained on the sources, the
  # decoder's and head's on the targets (WORKDIR/target_tokenizer.json), each with the sentinels;
  # of data.vocab_size / data.target_vocab_size ids (0 = data.vocab_size). data/target_vocab.py.
  d.separate_vocab = False
  d.target_vocab_size = 0
  # The Jinja chat template (Hugging Face's format) rendering chat data, and `serve`'s for
  # /v1/chat/completions; "" = jaxlm/data/chat.py's. Saved with a chat run's tokenizer.
  d.chat_template = ""
  # Label names of a classification / tagging run, in id order; () takes the sorted labels of the
  # training split. Saved with the run: evaluation data with another label is an error.
  d.labels = ()
  # Prompt/completion records longer than data.seq_len: "left" cuts the prompt from the left,
  # "drop" skips the record. Both are counted in the log. Seq2seq records: a source longer than
  # data.seq_len - 1 tokens is cut from the "left" (its end kept) or on the "right" (its start
  # kept: T5's and Hugging Face's choice), a target longer than data.target_len - 1 on the right
  # either way; "drop" skips the record.
  d.truncate = "left"
  # Validation records for prompt/completion data; "" holds out data.val_fraction of data.path.
  d.val_path = ""
  # The JSONL / TFDS field holding each document's text.
  d.text_field = "text"
  # Held-out share: of the files when there are several, else of the last characters (as nanoGPT).
  d.val_fraction = 0.1
  # Drop exact duplicate documents after cleaning.
  d.dedup = False
  # "sentencepiece" (trained on the training split), "char", "byte", "gpt2_bpe" (GPT-2's byte-level
  # BPE: trained on the training split, or imported with a model by `python -m jaxlm.convert from-hf`)
  # or "wordpiece" (BERT's, with [PAD] [UNK] [CLS] [SEP] [MASK]: trained on the training split with
  # `tokenizers`, or imported with a BERT). A BERT needs wordpiece. "hf": a Llama-family model's
  # own tokenizer.json, imported with it by `convert from-hf` (never trained here).
  d.tokenizer = "sentencepiece"
  d.sp_model_type = "bpe"  # SentencePiece's algorithm: "bpe" or "unigram"
  # SentencePiece / gpt2_bpe vocabulary size; char and byte tokenizers size their own vocabulary.
  d.vocab_size = 4096
  # Tokens per training window; must be <= model.max_len.
  d.seq_len = 256
  return d


def _model_options() -> ml_collections.ConfigDict:
  """The `model.*` options."""
  d = ml_collections.ConfigDict()
  # "gpt" (decoder-only: causal attention, next-token loss), "bert" (encoder-only: bidirectional
  # attention within each document, masked-LM pretraining, classification and tagging heads) or
  # "encdec" (encoder-decoder, T5 / the original Transformer: a bidirectional encoder over the
  # source, a causal decoder with cross-attention to it; models/encdec.py).
  d.family = "gpt"
  # What the output layer predicts: "lm" (GPT: the next token; BERT: the masked tokens, through an
  # MLM head tied to the embeddings), "classify" (one label per sequence, from a pooler over its
  # first token, [CLS]) or "tag" (one label per token: the first piece of each word). BERT only for
  # classify/tag. A finetune may change it: the new head starts from a fresh initialisation.
  d.head = "lm"
  # Size of the classify/tag head; set from data.labels when the run starts.
  d.num_labels = 0
  # "pre" (a norm before each sublayer and a final one: GPT-2) or "post" (a norm after each
  # residual add, and one over the embeddings: the original Transformer and BERT).
  d.norm_position = "pre"
  # Token-type (sentence A / B) embeddings: 2 for BERT, 0 for none.
  d.type_vocab_size = 0
  d.d_model = 256
  d.num_layers = 4
  # encdec only: decoder layers (T5's num_decoder_layers); 0 = model.num_layers (the encoder's).
  d.num_decoder_layers = 0
  d.num_heads = 4
  # Width of each attention head (T5's d_kv; flan-t5-small: d_model 512, 6 heads of 64); encdec
  # only. 0 = d_model // num_heads.
  d.head_size = 0
  # Key/value heads: grouped-query attention shares each among num_heads / num_kv_heads query
  # heads (1: multi-query); 0 = num_heads (ordinary multi-head attention). The KV cache holds
  # only these heads. With num_kv_heads < num_heads the projections are `attn/q` and `attn/kv`
  # instead of one fused `attn/qkv`.
  d.num_kv_heads = 0
  # Biases on the query, key and value projections even when model.use_bias is False (Qwen2).
  d.qkv_bias = False
  # Hidden width of the MLP (for swiglu: the width of each of the two input projections).
  d.mlp_dim = 1024
  # Longest sequence the model can take (size of the learned position table; the KV cache length).
  d.max_len = 256
  d.dropout = 0.0
  _add_layer_options(d)
  return d


def _add_layer_options(d: ml_collections.ConfigDict) -> None:
  """The `model.*` options of positions, norms, MLP and numerics, added to `d` in order."""
  # "learned" absolute position embeddings, "rope" rotary embeddings, or (encdec only) "relative"
  # (T5: a learned bias on the attention scores per head and distance bucket, one table per stack
  # shared by its layers; bidirectional buckets in the encoder, causal in the decoder; attention
  # scores are then not scaled by 1/sqrt(head_size), as in T5) or "sinusoidal" (fixed sin/cos
  # embeddings, the original Transformer). Positions count from 0 in each document.
  d.positions = "learned"
  # positions="relative": distance buckets (half per direction in the encoder), exact up to a
  # quarter (encoder) / half (decoder) of them, logarithmic beyond, up to this distance.
  d.relative_buckets = 32
  d.relative_max_distance = 128
  # RoPE base: the angle of feature pair i at position p is p / rope_theta^(2i / head_dim)
  # (10000 in the RoPE paper and Llama 2, 500000 in Llama 3, 1000000 in Qwen2).
  d.rope_theta = 10000.0
  # RoPE frequency scaling for contexts longer than training's: "none" or "llama3" (Llama 3.1:
  # wavelengths above rope_original_max_len / rope_low_freq_factor are divided by rope_factor,
  # below rope_original_max_len / rope_high_freq_factor kept, and blended in between).
  d.rope_scaling = "none"
  d.rope_factor = 8.0
  d.rope_low_freq_factor = 1.0
  d.rope_high_freq_factor = 4.0
  d.rope_original_max_len = 8192
  # "layernorm" or "rmsnorm".
  d.norm = "layernorm"
  # "gelu" (tanh approximation, as GPT-2), "gelu_exact" (erf, as BERT), "swiglu" or "geglu" (T5
  # v1.1's gated GELU, tanh approximation; as swiglu, mlp/wi holds the gate and up projections).
  d.mlp = "gelu"
  # Use the input embedding matrix as the output projection (encdec: on the decoder's output
  # scaled by d_model**-0.5, as T5's tie_word_embeddings; with data.separate_vocab the decoder's).
  d.tie_embeddings = True
  # Add biases to dense layers and LayerNorm (GPT-2 has them).
  d.use_bias = True
  # Epsilon added to the variance in LayerNorm / RMSNorm (GPT-2 uses 1e-5).
  d.norm_eps = 1e-5
  # Activation/compute dtype: "float32" or "bfloat16". Parameters and the loss stay float32.
  d.dtype = "float32"
  # Rematerialisation (activation recomputation in the backward pass, per layer): "none", "full"
  # (keep only each layer's input) or "dots" (keep matmul outputs, recompute the rest). Same numbers;
  # less activation memory for more compute.
  d.remat = "none"
  # One nn.scan over the layers, not a Python loop: compile time independent of depth. Parameters
  # sit under `blocks` with a leading layer axis (mesh rule "layers"); either layout restores the
  # other's checkpoints, converted (training/scan_layout.py), so an import may be finetuned scanned.
  d.scan_layers = False
  # Attention kernel: "xla", "cudnn" (cuDNN flash attention; GPU only, bfloat16/float16) or "auto"
  # (cudnn on a GPU when model.dtype is bfloat16, else xla). KV-cache decoding always uses xla.
  d.attention_impl = "auto"
  return d


def _train_options() -> ml_collections.ConfigDict:
  """The `train.*` options."""
  d = ml_collections.ConfigDict()
  # Global batch in sequences per optimizer step, over all devices and accumulation micro-steps.
  d.batch_size = 32
  # Micro-batches per optimizer step (gradient accumulation); divides train.batch_size.
  d.grad_accum_steps = 1
  d.steps = 2000
  # Peak learning rate.
  d.lr = 1e-3
  # "warmup_cosine", "warmup_linear", "constant" (after warmup) or "rsqrt" (lr * sqrt(warmup/step)).
  d.schedule = "warmup_cosine"
  d.warmup_steps = 100
  # Final learning rate of the cosine/linear decay as a fraction of train.lr.
  d.min_lr_ratio = 0.1
  # "adamw", "adam" or "sgd".
  d.optimizer = "adamw"
  d.b1 = 0.9
  d.b2 = 0.95
  # Weight decay: decoupled for adamw; added to the gradient (classic L2) for adam and sgd.
  d.weight_decay = 0.1
  # Also decay norm scales, biases and embeddings (GPT-2 practice is to exclude them).
  d.decay_all = False
  # SGD momentum and Nesterov.
  d.momentum = 0.9
  d.nesterov = False
  # Clip gradients to this global norm; 0 disables clipping.
  d.grad_clip = 1.0
  # Weight of the z-loss (log(Z)^2) that keeps the softmax normaliser near 1; 0 disables it.
  d.z_loss = 0.0
  d.seed = 0
  # A non-finite loss or gradient: "skip" the update (parameters and optimizer state untouched,
  # counted as `skipped` in the log) or "stop" the run with an error naming the step. Either way
  # no non-finite value reaches the parameters or a checkpoint.
  d.on_nonfinite = "skip"
  # Skip updates whose loss is more than this many standard deviations above its running mean
  # (over about the last 100 updates, after the first 20); 0 turns the spike guard off.
  d.spike_sigma = 0.0
  _add_objective_options(d)
  return d


def _add_objective_options(d: ml_collections.ConfigDict) -> None:
  """The `train.*` options of the objectives, logging and LoRA, added to `d` in order."""
  # Masked LM (BERT with head "lm"): share of tokens chosen for the loss, drawn afresh each step
  # from the step's key; of those 80% become [MASK], 10% a random token and 10% stay as they are.
  d.mlm_probability = 0.15
  # Masked LM: choose whole words (every WordPiece piece of a word) instead of single pieces.
  d.whole_word_masking = False
  # Span corruption (encdec with head "lm" on text, T5's objective): the share of each document's
  # tokens that becomes noise, and the mean length of a noise span (T5: 0.15 and 3.0). Each span is
  # replaced by a sentinel in the encoder input and the decoder predicts the spans.
  d.noise_density = 0.15
  d.mean_noise_span = 3.0
  # Steps between lines in metrics.jsonl / TensorBoard.
  d.log_every = 10
  # LoRA finetuning (needs init_from: the base run): low-rank adapters on the projections that
  # train.lora.targets names, the base parameters frozen (no gradients, no optimizer state).
  # Checkpoints hold the adapters, their optimizer state and a reference to the base run and step.
  d.lora = ml_collections.ConfigDict()
  # Adapter rank; 0 = no LoRA (a full finetune).
  d.lora.rank = 0
  # The adapters' output is scaled by alpha / rank.
  d.lora.alpha = 16.0
  # Dropout on the adapters' input during training.
  d.lora.dropout = 0.0
  # Which projections get adapters: "attention" (attn/qkv, q, kv, out), "mlp" (mlp/wi, wo), "all"
  # (both), or a regular expression searched in module paths such as "block_0/attn/qkv".
  d.lora.targets = "all"
  # Dtype the frozen base parameters are held in: "float32" or "bfloat16" (adapters stay float32).
  d.lora.base_dtype = "float32"
  return d


def _eval_options() -> ml_collections.ConfigDict:
  """The `eval.*` options."""
  d = ml_collections.ConfigDict()
  d.every = 500  # steps between evaluations during training; 0 = only at the end
  d.batch_size = 32  # sequences per eval batch (global)
  # Batches per evaluation; 0 = the whole validation split.
  d.max_batches = 0
  # Tokens sampled into the log at each evaluation; 0 disables it.
  d.sample_tokens = 64
  return d


def _checkpoint_options() -> ml_collections.ConfigDict:
  """The `checkpoint.*` options."""
  d = ml_collections.ConfigDict()
  d.every = 500  # steps between checkpoints; one is always written at the end
  d.keep = 3  # checkpoints kept (the oldest are deleted)
  return d


def _mesh_options() -> ml_collections.ConfigDict:
  """The `mesh.*` options."""
  d = ml_collections.ConfigDict()
  # CPU hosts only: split the host into this many XLA devices before JAX starts (0 = JAX's choice:
  # one device, or --xla_force_host_platform_device_count). XLA:CPU spreads one small step poorly
  # over cores; one device per core, each with its share of the batch, is 1.35-1.5x faster for
  # small models (docs/benchmarks.md). It does not change GPU/TPU device counts.
  d.cpu_devices = 0
  # Devices on each mesh axis; -1 takes the devices left over (at most one axis may say -1).
  d.data = -1
  d.fsdp = 1
  d.tensor = 1
  # Logical axis -> mesh axes. Parameter axes: vocab, embed, heads, kv, mlp, pos, norm.
  # Activation axes (act_*) are separate so FSDP shards weights without sharding activations' features.
  d.rules = (
      ("act_batch", ("data", "fsdp")),
      ("act_len", None),
      ("act_embed", None),
      ("act_heads", "tensor"),
      ("act_mlp", "tensor"),
      ("act_vocab", "tensor"),
      ("vocab", "tensor"),
      ("embed", "fsdp"),
      ("heads", "tensor"),
      # Key/value heads of grouped-query attention: split over tensor like the query heads when
      # tensor divides them, else replicated (see sharding.logical_shardings).
      ("kv_heads", "tensor"),
      ("kv", None),
      ("mlp", "tensor"),
      ("pos", None),
      ("norm", None),
      ("layers", None),
      # The relative-position bias table of model.positions="relative" ([buckets, heads]).
      ("relative_buckets", None),
  )
  return d


def section_dataclass(section: str):
  """Class decorator: a frozen dataclass whose fields take their defaults from `base_config()`'s
  `section`, so a default is written once (above), and `cls.from_config(config.<section>)`.

  Fields that the section lacks (a model's vocab_size, set by its tokenizer) have no default.
  """
  def decorate(cls):
    values = base_config()
    for part in section.split("."):
      values = values[part]
    for name in cls.__annotations__:
      if name in values:
        setattr(cls, name, values[name])
    cls = dataclasses.dataclass(frozen=True)(cls)

    def from_config(klass, node: ml_collections.ConfigDict, **rest):
      return klass(**{f.name: node[f.name] for f in dataclasses.fields(klass) if f.name in node},
                   **rest)
    cls.from_config = classmethod(from_config)
    return cls
  return decorate


def from_saved(saved: dict) -> ml_collections.ConfigDict:
  """A saved run's config on top of today's defaults, so options added since still have values."""
  config = base_config()

  def merge(node: ml_collections.ConfigDict, values: dict) -> None:
    for key, value in values.items():
      if key not in node:
        continue  # an option that no longer exists
      if isinstance(node[key], ml_collections.ConfigDict):
        merge(node[key], value)
      else:
        node[key] = value

  merge(config, saved)
  return config
