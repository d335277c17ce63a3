"""Service settings: every field is a CLI flag of `afrl serve` and an environment variable `AFRL_<NAME>`.

Bad values are refused when the settings are built (at start), with the field named, rather than at the first
request. Precedence: CLI flag > environment variable > default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AFRL_", extra="ignore", validate_default=True)

    model: str = Field(default="default", description="`default`, a model folder or hub id; for onnx an export folder")
    backend: Literal["torch", "onnx", "auto"] = Field(
        default="auto",
        description="inference backend; auto: the fastest for this machine (service/backend_choice.py)",
    )
    host: str = Field(default="127.0.0.1", description="bind address")
    port: int = Field(default=8000, ge=0, le=65535, description="bind port (0 picks a free one)")
    dtype: Literal["auto", "bf16", "fp32"] = Field(
        default="auto",
        description="torch weights: auto = bf16 where it is fast on the device (a GPU with bf16, a CPU with AMX or "
        "AVX512-BF16), else fp32",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="torch backend: cuda when torch sees a GPU (auto), else cpu"
    )
    threads: int | None = Field(
        default=None, ge=1, description="intra-op threads (torch, onnxruntime); default: all cores"
    )
    onnx_providers: str = Field(default="cpu", description="onnxruntime providers: cpu, cuda or tensorrt")
    api_key: SecretStr | None = Field(
        default=None, description="if set, model endpoints need `Authorization: Bearer KEY`"
    )

    max_batch_pairs: int = Field(default=32, ge=1, description="most pairs in one forward pass")
    max_batch_tokens: int = Field(default=16384, ge=64, description="most padded tokens (pairs x longest) in one pass")
    max_wait_ms: float = Field(default=5.0, ge=0, le=10_000, description="how long the batcher waits to fill a batch")
    max_queue_pairs: int = Field(default=2048, ge=1, description="pairs waiting beyond this are refused with 429")
    max_documents: int = Field(default=1000, ge=1, description="documents (or pairs) per request; more gives 413")
    max_instruction_tokens: int = Field(
        default=256, ge=1, description="tokens of a per-request `instruction` override; longer ones get 422"
    )
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="request bodies larger than this get 413")
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="a client that stalls this long mid-body gets 408 and its connection closed"
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="a client whose request headers are not complete this long after it connects (or after its last "
        "response) gets 408 and its connection closed",
    )
    request_timeout_s: float = Field(default=30.0, gt=0, description="deadline of a scoring request; past it, 503")
    prefix_reuse: bool = Field(default=True, description="compute a shared instruction + query prefix once (KV cache)")
    prefix_reuse_min_documents: int = Field(default=4, ge=2, description="documents per query to reuse a prefix")

    max_new_tokens: int = Field(default=160, ge=1, le=4096, description="explanation length limit (tokens)")
    max_concurrent_explanations: int = Field(default=2, ge=1, description="explanations generated at the same time")
    explain_timeout_s: float = Field(default=120.0, gt=0, description="deadline of one whole explanation")

    warmup: bool = Field(default=True, description="run a few requests through the model before /ready turns true")
    drain_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="on SIGTERM: how long in-flight work may finish (/ready is false meanwhile); streams still open "
        "then end with an `error` event",
    )
    log_json: bool = Field(default=True, description="one JSON object per log line")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info")

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.max_batch_pairs > self.max_queue_pairs:
            raise ValueError(
                f"max_batch_pairs ({self.max_batch_pairs}) exceeds max_queue_pairs ({self.max_queue_pairs}): "
                "raise AFRL_MAX_QUEUE_PAIRS or lower AFRL_MAX_BATCH_PAIRS"
            )
        if self.api_key is not None and not self.api_key.get_secret_value().strip():
            raise ValueError("AFRL_API_KEY is set but empty: unset it to serve without a key")
        return self
