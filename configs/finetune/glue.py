r"""GLUE from the original TSV files (SST-2 by default), language encoder + MLP on <s>.

Run:  python -m xfm_jax.finetune --config=configs/finetune/glue.py --workdir=DIR \
          --init=CONVERTED_XFM --config.task.tsv_dir=/data/glue/SST-2 \
          --config.data.vocab.kind=bpe --config.data.vocab.path=vocab.json \
          --config.data.vocab.merges_path=merges.txt
Other tasks: --config.task.text_fields=sentence1,sentence2 --config.task.label_names=... (MNLI:
entailment,neutral,contradiction with eval_split=dev_matched; RTE: entailment,not_entailment;
STS-B: --config.task.regression=True --config.task.label_field=score).
Expect: SST-2 95.0, MNLI 87.7, STS-B 90.8 Pearson with the X-FM base checkpoint (paper).
"""

from configs.finetune import base


def get_config(arg: str = ''):
    config = base.finetune_config(
        'text_classification', arg, source='glue_tsv', text_len=64 if arg else 128,
        tsv_dir='', text_fields='sentence', label_field='label', label_names='0,1',
        regression=False, vocab_words=400 if arg else 0)
    config.task.eval_split = 'dev'
    return config
