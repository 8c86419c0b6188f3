"""``edgeclf sweep``: choose the model for the device. Every backbone x input size is trained (one scan and
split shared by all, the feature cache shared per backbone and size), exported (int8 within the accuracy
budget, as export does) and benched on every device named; the sweep folder then holds the accuracy/latency
front per device and, with a budget, the most accurate artifact that meets it there.

    runs/sweep/<name>/
      sweep_settings.json  state.json       the options, and where each candidate stands (resume reads them)
      split.json  data_report.json          the one scan: every candidate trains on this exact split
      runs/<model>-<imgsz>/                 each candidate's run folder, its export/ and bench/ inside
      logs/<model>-<imgsz>.<stage>.log      what each stage printed
      sweep.csv  sweep.json  sweep.md  sweep-<device>.png

Stages run as ``edgeclf train|export|bench`` processes of their own (a failure or a crash of one stays one
candidate's row); a stage is finished when its file is there (``state.json`` done, ``edgeclf.json``,
``bench.json``), so ``--resume`` after a kill redoes nothing finished.
"""
