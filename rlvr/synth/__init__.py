"""HopChain data synthesis: multi-hop, instance-grounded visual questions ending in one number.

Four stages per image (``python -m rlvr.synth.hopchain``): categories (a VLM lists what is
there), instances (SAM3, a detector, or the dataset's own boxes), queries (a VLM or the
programmatic writer chains 3-6 instances into hops), verification (K solvers agree with
the writer; a weaker model must not always solve it). Records between the stages are in
``rlvr.synth.records``.
"""
