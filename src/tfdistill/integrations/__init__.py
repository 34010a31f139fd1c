"""Any tfdistill method inside the training code people already have -- thin modules over the public API
(:func:`tfdistill.create_method`, :meth:`Method.capture <tfdistill.methods.Method.capture>`,
:meth:`Method.terms_from <tfdistill.methods.Method.terms_from>`, :meth:`Method.bind <tfdistill.methods.Method.bind>`):

* :mod:`.transformers` -- ``DistillTrainer``, a ``transformers.Trainer`` (``pip install 'tfdistill[transformers]'``);
* :mod:`.lightning` -- ``DistillCallback`` for an unmodified ``LightningModule`` (``tfdistill[lightning]``);
* :mod:`.timm` -- ``DistillTask``, a ``timm.task.TrainingTask`` (``tfdistill[timm]``);
* Accelerate needs no module: ``method.bind(accelerator.prepare(model))`` (docs/integrations/accelerate.md).

Each adds the method's terms to the framework's own cross-entropy (weighted by the method's ``ce_weight``; never a
second cross-entropy), offers the method's own parameters to the optimizer, checkpoints its state and calls its
per-epoch hook. Importing a module whose framework is not installed is one line naming the ``pip install``.
"""
