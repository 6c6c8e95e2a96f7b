"""lm-eval-harness over bigtrain checkpoints: the ``bigtrain`` model type.

Run the harness with bigtrain's model registered (lm_eval has no plugin discovery for models)::

    python -m bigtrain.eval.harness --model bigtrain --model_args checkpoint=RUN_OR_CKPT,max_length=64 \\
        --tasks bigtrain_digits --include_path bigtrain/eval/tasks
    # the same through transformers, on an export:
    bigtrain export-hf --input RUN_OR_CKPT --output HF_DIR
    lm_eval --model hf --model_args pretrained=HF_DIR,dtype=float32,max_length=64 \\
        --tasks bigtrain_digits --include_path bigtrain/eval/tasks

or from Python: ``lm_eval.simple_evaluate(model=BigtrainLM(checkpoint=...), tasks=[...])``.

The checkpoint may be of any TP/PP layout (or consolidated); it is evaluated in one process
(``load_model_for_inference``). Tokenization follows lm-eval's ``hf`` model on the exported tokenizer
(BOS first, the pair split of ``TemplateLM._encode_pair``), so both paths score the same token ids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from bigtrain.errors import BigtrainError


@register_model("bigtrain")
class BigtrainLM(TemplateLM):
    def __init__(self, checkpoint: str | None = None, max_length: int | None = None, batch_size: int | str = 8,
                 max_gen_toks: int = 256, add_bos_token: bool = True, **kwargs):
        super().__init__()
        if not checkpoint:
            raise BigtrainError("--model_args checkpoint=RUN_OR_CKPT is required")
        from bigtrain.generate.inference import load_model_for_inference

        self.model, self.tok, self.job = load_model_for_inference(checkpoint)
        if self.tok is None:
            raise BigtrainError(f"{checkpoint}: no tokenizer in this checkpoint; lm-eval needs one")
        self._max_length = int(max_length or self.job.model.seq_len)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self._max_gen_toks = int(max_gen_toks)
        self.add_bos_token = add_bos_token if isinstance(add_bos_token, bool) else str(add_bos_token) == "True"

    # --- tokenization -----------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tok.bos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len=None, **kwargs):
        add = self.add_bos_token if add_special_tokens is None else add_special_tokens
        bos_text = "<s>"
        if add_special_tokens is None and string.startswith(bos_text):
            add, string = True, string[len(bos_text):]
        ids = ([self.tok.bos_id] if add else []) + self.tok.encode(string)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, ids) -> str:
        return self.tok.decode(ids)

    # --- scoring ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        out = []
        for _, context_enc, continuation_enc in requests:
            if not continuation_enc:
                out.append((0.0, True))
                continue
            inp = (list(context_enc) + list(continuation_enc))[-(self.max_length + 1):][:-1]
            n = len(continuation_enc)
            logits = self.model(torch.tensor([inp], dtype=torch.long))[0].float()
            logp = F.log_softmax(logits[-n:], dim=-1)
            target = torch.tensor(continuation_enc[-n:], dtype=torch.long)
            ll = float(logp.gather(1, target[:, None]).sum())
            greedy = bool((logp.argmax(-1) == target).all())
            out.append((ll, greedy))
            if hasattr(self, "cache_hook") and self.cache_hook is not None:
                pass
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval import utils

        results = []
        for (string,) in [r.args for r in requests]:
            windows = list(map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)))
            scores = self._loglikelihood_tokens([(None,) + w for w in windows])
            results.append(sum(s for s, _ in scores))
        return results

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from bigtrain.generate.sampling import generate

        out = []
        for context, gen_kwargs in [r.args for r in requests]:
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.get("until") or []
            if isinstance(until, str):
                until = [until]
            max_new = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature", 0.0) or 0.0) > 0:
                raise BigtrainError("the bigtrain lm-eval model generates greedily only (do_sample=false)")
            ids = self.tok_encode(context, left_truncate_len=max(1, self.max_length - max_new))
            max_new = min(max_new, self.max_length - len(ids))
            new = generate(self.model, ids, max_new_tokens=max(0, max_new), eos_id=self.tok.eos_id) if max_new > 0 else []
            if new and new[-1] == self.tok.eos_id:
                new = new[:-1]
            text = self.tok.decode(new)
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop)[0]
            out.append(text)
        return out


def main() -> None:
    """``python -m bigtrain.eval.harness ARGS``: lm_eval's CLI with the ``bigtrain`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    from bigtrain import quiet

    quiet.install()

    cli_evaluate()


if __name__ == "__main__":
    main()
