"""The course's `Solver`: minibatch training of a hand-written model with a hand-written update rule.

A Solver encapsulates the logic for training classification models. It performs
stochastic gradient descent with any update rule (SGD, momentum, RMSProp, Adam, ...
written as plain functions), keeps loss and accuracy histories, and at the end of
training swaps the parameters with the best validation accuracy back into the model.

Model contract
--------------
* ``model.params``: dict mapping parameter names to tensors.
* ``model.loss(X, y=None)``:

  * ``X``: minibatch of inputs, shape ``(N, d_1, ..., d_k)``;
  * ``y``: labels, int64 tensor of shape ``(N,)`` with ``y[i]`` in ``[0, C)``, or None.

  With ``y=None`` (test time) it returns ``scores`` of shape ``(N, C)``, ``scores[i, c]``
  being the score of class ``c`` for ``X[i]``. With labels (training time) it returns
  ``(loss, grads)``: a scalar tensor (or number) and a dict with the keys of
  ``model.params`` whose values are gradients shaped like the parameters.
* optional ``model.bn_params``: a list of dicts (one per batch-norm layer), or a dict of
  such dicts keyed by layer name, whose tensor values (``running_mean``, ``running_var``) are
  state that test-time scores depend on. The Solver keeps them with the best params and puts
  them back with them.

Update rules
------------
``update_rule(w, dw, config) -> (next_w, next_config)``: ``w`` the current weights,
``dw`` the gradient of the loss with respect to ``w`` (same shape), ``config`` a dict of
hyperparameters and state (learning rate, moment caches, ...) private to this parameter.
The Solver keeps one copy of ``optim_config`` per parameter and calls the rule under
``torch.no_grad()``. The default rule is the static method ``Solver.sgd``.

Example::

    data = {"X_train": ..., "y_train": ..., "X_val": ..., "y_val": ...}
    model = MyAwesomeModel(hidden_size=100, reg=10)
    solver = Solver(model, data, update_rule=sgd_momentum,
                    optim_config={"learning_rate": 1e-3}, lr_decay=0.95,
                    num_epochs=10, batch_size=100, print_every=100,
                    device=eecs598.get_device())
    solver.train()
    solver.loss_history, solver.train_acc_history, solver.val_acc_history, solver.best_val_acc
"""
import time

import torch


class Solver:
    """Train a classification model (``model.params`` + ``model.loss``) by minibatch gradient descent.

    Required arguments:

    * model: an object with ``params`` (dict name -> tensor) and ``loss(X, y=None)``
      (see the module docstring).
    * data: dict with
      ``X_train`` (N_train, d_1, ..., d_k), ``y_train`` (N_train,) int64,
      ``X_val`` (N_val, d_1, ..., d_k), ``y_val`` (N_val,) int64.

    Optional keyword arguments (defaults):

    * update_rule (``Solver.sgd``): function ``(w, dw, config) -> (next_w, next_config)``.
    * optim_config (``{}``): hyperparameters passed to the update rule; copied per parameter.
    * lr_decay (1.0): each parameter's ``config["learning_rate"]`` is multiplied by it at
      the end of every epoch.
    * batch_size (100): minibatch size.
    * num_epochs (10): number of epochs to train for.
    * num_train_samples (1000): training samples used for the train-accuracy check
      (None: all of them).
    * num_val_samples (None): validation samples used for the val-accuracy check
      (None: all of them).
    * device ("cpu"): device the minibatches and accuracy-check data are moved to
      (the model's parameters must already live there).
    * checkpoint_name (None): if given, a checkpoint ``"%s_epoch_%d.pkl" % (checkpoint_name, epoch)``
      is written with ``torch.save`` at every accuracy check (first iteration, each epoch
      end, last iteration).
    * print_every (10): print the training loss every this many iterations.
    * print_acc_every (1): print accuracies every this many epochs.
    * verbose (True): set to False to print nothing during training.

    Unknown keyword arguments raise ValueError.

    Attributes after ``train()``: ``loss_history`` (one float per iteration),
    ``train_acc_history`` / ``val_acc_history`` (one float fraction per accuracy check),
    ``best_val_acc``, ``best_params`` (clones of the params with the best val accuracy),
    ``best_bn_state`` (clones of the batch-norm running statistics at that check, if any),
    ``epoch`` (completed epochs), ``optim_configs`` (per-parameter update-rule state).
    """

    def __init__(self, model, data, **kwargs):
        self.model = model
        missing = [k for k in ("X_train", "y_train", "X_val", "y_val") if k not in data]
        if missing:
            raise KeyError(f"data is missing the keys {missing}; it needs X_train, y_train, X_val, y_val")
        self.X_train = data["X_train"]
        self.y_train = data["y_train"]
        self.X_val = data["X_val"]
        self.y_val = data["y_val"]

        # Unpack keyword arguments
        self.update_rule = kwargs.pop("update_rule", self.sgd)
        self.optim_config = kwargs.pop("optim_config", {})
        self.lr_decay = kwargs.pop("lr_decay", 1.0)
        self.batch_size = kwargs.pop("batch_size", 100)
        self.num_epochs = kwargs.pop("num_epochs", 10)
        self.num_train_samples = kwargs.pop("num_train_samples", 1000)
        self.num_val_samples = kwargs.pop("num_val_samples", None)

        self.device = kwargs.pop("device", "cpu")

        self.checkpoint_name = kwargs.pop("checkpoint_name", None)
        self.print_every = kwargs.pop("print_every", 10)
        self.print_acc_every = kwargs.pop("print_acc_every", 1)
        self.verbose = kwargs.pop("verbose", True)

        # Throw an error if there are extra keyword arguments
        if len(kwargs) > 0:
            extra = ", ".join('"%s"' % k for k in list(kwargs.keys()))
            raise ValueError("Unrecognized arguments %s" % extra)
        if not callable(self.update_rule):
            raise ValueError(f"update_rule must be a function (w, dw, config) -> (next_w, next_config), "
                             f"got {self.update_rule!r}")

        self._reset()

    def _reset(self):
        """Set up the book-keeping variables. Don't call this manually."""
        self.epoch = 0
        self.best_val_acc = 0
        self.best_params = {}
        self.best_bn_state = []
        self.loss_history = []
        self.train_acc_history = []
        self.val_acc_history = []

        # Make a copy of the optim_config for each parameter
        self.optim_configs = {}
        for p in self.model.params:
            d = {k: v for k, v in self.optim_config.items()}
            self.optim_configs[p] = d

    def _step(self):
        """Make a single gradient update: one random minibatch, loss and grads, one update per param.

        Called by train(); don't call it manually.
        """
        # Make a minibatch of training data (indices drawn on the CPU, then moved to the data)
        num_train = self.X_train.shape[0]
        batch_mask = torch.randperm(num_train)[: self.batch_size]
        X_batch = self.X_train[batch_mask.to(self.X_train.device)].to(self.device)
        y_batch = self.y_train[batch_mask.to(self.y_train.device)].to(self.device)

        # Compute loss and gradient
        loss, grads = self.model.loss(X_batch, y_batch)
        self.loss_history.append(float(loss))

        # Perform a parameter update
        with torch.no_grad():
            for p, w in list(self.model.params.items()):
                dw = grads[p]
                config = self.optim_configs[p]
                next_w, next_config = self.update_rule(w, dw, config)
                self.model.params[p] = next_w
                self.optim_configs[p] = next_config

    def _save_checkpoint(self, iteration=None):
        """Write the checkpoint ``"%s_epoch_%d.pkl" % (checkpoint_name, epoch)`` (if a name is set);
        with ``iteration`` (a check in the middle of an epoch, after a time-limit stop) the name
        is ``"%s_epoch_%d_iter_%d.pkl"``, so the end-of-epoch checkpoint is not overwritten.

        The file is written with ``torch.save`` and holds plain data only, so
        ``torch.load(path)`` (weights_only) reads it back:
        ``model_params`` (dict of tensors), ``model_class`` and ``update_rule`` (names),
        ``optim_config``, ``optim_configs``, ``lr_decay``, ``batch_size``,
        ``num_train_samples``, ``num_val_samples``, ``epoch``, ``loss_history``,
        ``train_acc_history``, ``val_acc_history``, ``best_val_acc``, ``bn_state`` (the
        batch-norm running statistics, see `_bn_state`).
        """
        if self.checkpoint_name is None:
            return
        checkpoint = {
            "model_params": {k: v.detach().clone() for k, v in self.model.params.items()},
            "model_class": type(self.model).__qualname__,
            "update_rule": getattr(self.update_rule, "__qualname__", repr(self.update_rule)),
            "lr_decay": self.lr_decay,
            "optim_config": self.optim_config,
            "optim_configs": self.optim_configs,
            "batch_size": self.batch_size,
            "num_train_samples": self.num_train_samples,
            "num_val_samples": self.num_val_samples,
            "epoch": self.epoch,
            "loss_history": self.loss_history,
            "train_acc_history": self.train_acc_history,
            "val_acc_history": self.val_acc_history,
            "best_val_acc": self.best_val_acc,
            "bn_state": self._bn_state(),
        }
        filename = "%s_epoch_%d.pkl" % (self.checkpoint_name, self.epoch)
        if iteration is not None:
            filename = "%s_epoch_%d_iter_%d.pkl" % (self.checkpoint_name, self.epoch, iteration)
        if self.verbose:
            print('Saving checkpoint to "%s"' % filename)
        torch.save(checkpoint, filename)

    @staticmethod
    def sgd(w, dw, config=None):
        """Vanilla stochastic gradient descent: ``w -= learning_rate * dw`` (in place).

        w, dw: tensors of the same shape. config: dict with ``learning_rate``
        (default 1e-2; set in ``config`` if absent). Returns ``(w, config)``.
        """
        if config is None:
            config = {}
        config.setdefault("learning_rate", 1e-2)

        w -= config["learning_rate"] * dw
        return w, config

    def history(self):
        """The training curves as plain lists: loss_history, train_acc_history, val_acc_history."""
        return {"loss_history": list(self.loss_history),
                "train_acc_history": list(self.train_acc_history),
                "val_acc_history": list(self.val_acc_history)}

    def check_accuracy(self, X, y, num_samples=None, batch_size=100):
        """Fraction of samples of (X, y) that the model classifies correctly.

        X: (N, d_1, ..., d_k) inputs; y: (N,) int64 labels.
        num_samples: if not None and smaller than N, score a random subset of this many
        samples (drawn with ``torch.randperm`` on the CPU).
        batch_size: the model is run on batches of this size to bound memory.
        Returns a Python float in [0, 1].
        """
        # Maybe subsample the data
        N = X.shape[0]
        if num_samples is not None and N > num_samples:
            mask = torch.randperm(N)[:num_samples]
            N = num_samples
            X = X[mask.to(X.device)]
            y = y[mask.to(y.device)]
        X = X.to(self.device)
        y = y.to(self.device)

        # Compute predictions in batches
        num_batches = (N + batch_size - 1) // batch_size
        y_pred = []
        with torch.no_grad():
            for i in range(num_batches):
                start = i * batch_size
                end = (i + 1) * batch_size
                scores = self.model.loss(X[start:end])
                y_pred.append(torch.argmax(scores, dim=1))
        if not y_pred:
            return 0.0
        y_pred = torch.cat(y_pred)
        acc = (y_pred == y).to(torch.float).mean()
        return acc.item()

    @torch.no_grad()
    def _check_accuracies_and_keep_best(self, iteration=None):
        """Check train and val accuracy, append them to the histories, clone the params into
        best_params if val accuracy is the best so far (the first check always records them, so
        the final swap never empties model.params), then write a checkpoint (whose
        best_val_acc includes this check; ``iteration``: see `_save_checkpoint`)."""
        train_acc = self.check_accuracy(self.X_train, self.y_train, num_samples=self.num_train_samples)
        val_acc = self.check_accuracy(self.X_val, self.y_val, num_samples=self.num_val_samples)
        self.train_acc_history.append(train_acc)
        self.val_acc_history.append(val_acc)
        if self.verbose and self.epoch % self.print_acc_every == 0:
            print("(Epoch %d / %d) train acc: %f; val_acc: %f"
                  % (self.epoch, self.num_epochs, train_acc, val_acc))
        if val_acc > self.best_val_acc or not self.best_params:
            self.best_val_acc = val_acc
            self.best_params = {k: v.clone() for k, v in self.model.params.items()}
            self.best_bn_state = self._bn_state()
        self._save_checkpoint(iteration)

    def _bn_state(self):
        """Clones of the tensors in ``model.bn_params`` (batch-norm running statistics): one
        dict per layer; [] for a model without batch norm."""
        return [{k: v.clone() for k, v in layer.items() if torch.is_tensor(v)}
                for layer in self._bn_layers()]

    def _bn_layers(self):
        """The per-layer dicts of ``model.bn_params`` (a list, or a dict keyed by layer name)."""
        layers = getattr(self.model, "bn_params", None) or []
        return list(layers.values()) if isinstance(layers, dict) else list(layers)

    def train(self, time_limit=None, return_best_params=True):
        """Run ``num_epochs * max(N_train // batch_size, 1)`` iterations of ``_step``.

        Train and val accuracy are checked (and a checkpoint written) on the first
        iteration, at the end of each epoch and on the last iteration; the params with
        the best val accuracy so far are cloned into ``best_params``. At each epoch end,
        ``epoch`` is incremented and every ``config["learning_rate"]`` is multiplied by
        ``lr_decay``.

        time_limit: seconds, or None. Before each iteration (after the first) training
        stops if the elapsed time plus the duration of the previous training step would
        exceed the limit (the step alone: the course's Solver also counted the accuracy
        check and checkpoint after it, and so stopped up to a whole check early after
        every epoch end). Accuracy is then checked once more (unless the last iteration
        was just checked; its checkpoint is ``<name>_epoch_<e>_iter_<t>.pkl``), so the
        params trained since the last check can be the best.
        return_best_params: if True, the best-val params are put back into
        ``model.params`` at the end, and the batch-norm running statistics of that check into
        ``model.bn_params``.
        """
        num_train = self.X_train.shape[0]
        iterations_per_epoch = max(num_train // self.batch_size, 1)
        num_iterations = self.num_epochs * iterations_per_epoch
        start_time = time.time()
        step_seconds = 0.0  # duration of the last training step (without accuracy checks)
        last_checked = None  # the last iteration after which accuracy was checked

        for t in range(num_iterations):
            cur_time = time.time()
            if (time_limit is not None) and (t > 0):
                if cur_time - start_time + step_seconds > time_limit:
                    if self.verbose:
                        print("(Time %.2f sec; Iteration %d / %d) loss: %f"
                              % (cur_time - start_time, t, num_iterations, self.loss_history[-1]))
                        print("End of training; next iteration will exceed the time limit.")
                    if last_checked != t - 1:  # the params trained since the last check count too
                        self._check_accuracies_and_keep_best(iteration=t)
                    break

            self._step()
            step_seconds = time.time() - cur_time

            # Maybe print training loss
            if self.verbose and t % self.print_every == 0:
                print("(Time %.2f sec; Iteration %d / %d) loss: %f"
                      % (time.time() - start_time, t + 1, num_iterations, self.loss_history[-1]))

            # At the end of every epoch, increment the epoch counter and decay the learning rate.
            epoch_end = (t + 1) % iterations_per_epoch == 0
            if epoch_end:
                self.epoch += 1
                for k in self.optim_configs:
                    if "learning_rate" in self.optim_configs[k]:
                        self.optim_configs[k]["learning_rate"] *= self.lr_decay

            # Check train and val accuracy on the first iteration, the last iteration,
            # and at the end of each epoch.
            if t == 0 or t == num_iterations - 1 or epoch_end:
                self._check_accuracies_and_keep_best()
                last_checked = t

        # At the end of training swap the best params into the model
        if return_best_params and self.best_params:
            for k, v in self.best_params.items():
                self.model.params[k] = v.clone()
            # and the running statistics the best params were checked with
            for layer, saved in zip(self._bn_layers(), self.best_bn_state):
                layer.update({k: v.clone() for k, v in saved.items()})
