"""The job of tests/llm/test_parallel.py: the same code run in one process (imported) or by every rank
under torchrun (`python -m torch.distributed.run ... lm_parallel_job.py OUT MODE EPOCHS STOP_AFTER [TOKENIZER]`)."""
import os, sys, json
import numpy as np, torch
from edgekd import dist
from edgekd.config import DistillConfig, LossConfig
from edgekd.distill import trainer
from edgekd.distill.cache import TopKSequenceCache
from edgekd.distill.losses import build_losses
from edgekd.llm.sequences import Example, answer_rows, distill, teacher_rows
from transformers import LlamaConfig, LlamaForCausalLM


def job(out, mode, epochs, stop_after, tok_folder=""):

    if mode != "single":
        dist.init("cpu")
    rank, world = dist.rank_world()

    if tok_folder:  # the teacher's answers, sharded by rank: a tiny random Llama on SmolLM2's tokenizer
        from transformers import AutoTokenizer
        from edgekd.llm.generate import generate_answers

        tok = AutoTokenizer.from_pretrained(tok_folder)
        torch.manual_seed(5)
        gcfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                           tie_word_embeddings=True, eos_token_id=2, bos_token_id=1, initializer_range=0.5)
        gm = LlamaForCausalLM(gcfg).eval()
        with torch.no_grad():  # special tokens get logit 0, so greedy picks words (a random model says something)
            gm.model.embed_tokens.weight[tok.all_special_ids] = 0
        prompts = [{"id": f"p{i}", "prompt": f"Tell me about the number {i}."} for i in range(11)]
        cache_file = __import__("pathlib").Path(out, "gen.jsonl")
        settings = {"teacher": "tiny", "max_new_tokens": 5, "batch_size": 2}
        first = generate_answers(gm, tok, prompts[:4], cache_file, settings)  # cached before the larger set
        rows = generate_answers(gm, tok, prompts, cache_file, settings)
        if rank == 0:
            json.dump(rows, open(os.path.join(out, "gen-rows.json"), "w"))

    def lm(seed, layers=2):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                          tie_word_embeddings=True)
        return LlamaForCausalLM(cfg)

    rng = np.random.default_rng(0)
    ex = [Example(rng.integers(3, 40, size=n).tolist(), int(s))
          for n, s in zip(rng.integers(6, 14, 27), rng.integers(2, 5, 27))]
    train, val = ex[:21], ex[21:]  # 21 = 5 global batches of 4 and a last one of 1: a rank gets an empty share
    teacher = lm(99).eval()
    cache = TopKSequenceCache(os.path.join(out, "cache")).write(teacher_rows(teacher, train, 0), answer_rows(train), 4,
                                                                 batch_size=3)
    losses = [LossConfig(kind="soft_label", weight=0.5, temperature=2.0), LossConfig(kind="hard_label", weight=0.5)]
    cfg = DistillConfig(epochs=epochs, batch_size=4, lr=1e-2, seed=1, losses=losses)
    if stop_after:  # the run is killed right after the checkpoint of epoch `stop_after`, on every rank
        real_save = trainer._EpochLoop.save
        def save(self, epoch):
            real_save(self, epoch)
            if epoch + 1 == stop_after:
                raise SystemExit(3)
        trainer._EpochLoop.save = save
    student = lm(0)
    res = distill(student, train, val, build_losses(losses, student, None, None), cfg, 0, cache=cache,
                  checkpoint=__import__("pathlib").Path(out, "ck.pt"), parallel=mode if mode != "single" else "auto")
    if rank == 0:
        torch.save(res["student"].state_dict(), os.path.join(out, "student.pt"))
        json.dump({"history": [{k: v for k, v in h.items() if k != "seconds"} for h in res["history"]],
                   "parallel": res.get("parallel")}, open(os.path.join(out, "res.json"), "w"))


if __name__ == "__main__":
    job(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else "")
