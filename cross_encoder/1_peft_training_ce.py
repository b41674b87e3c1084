"""Train a LoRA cross-encoder reranker on stage 2's padded rows (RWKV-5 trunk + score head).

Single process:   python cross_encoder/1_peft_training_ce.py --model_file M.pth --ds_dir PADDED --output_dir OUT
Several GPUs:     torchrun --nproc_per_node 4 cross_encoder/1_peft_training_ce.py ... (DDP)
Resume:           add --lora_ckpt OUT (the newest checkpoint there is continued; a missing or
                  empty folder starts fresh; the flags that decide the run must be the same).

Every flag and its help text is defined next to its field in cross_encoder/training/config.py.
"""
from cross_encoder.evaluation.raw_pools import RawPoolEval
from cross_encoder.runtime import run_cli_on_ranks
from cross_encoder.training.config import config_from_args
from cross_encoder.training.outputs.run_dir import interrupted_note
from cross_encoder.training.trainer import main

if __name__ == "__main__":
    config = config_from_args(description=__doc__)
    # --eval_input_file ranks raw pools with the evaluator's code, which training does not import.
    run_cli_on_ranks(lambda c: main(c, pool_eval=RawPoolEval), config, interrupted=lambda: interrupted_note(config))
