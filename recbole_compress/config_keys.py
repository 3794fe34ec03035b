"""Declared configuration keys: what a model, trainer or phase reads, and the values it allows, as data.

A plugin model (and a trainer) lists the keys it reads in its class attribute ``config_keys``, relations between keys
in ``config_relations``, rules that need the loaded dataset in ``data_rules``, and the other phases of its run
(e.g. a teacher trained first) in ``phases``::

    class LSAN(SequentialRecommender):
        config_keys = (
            Key("hidden_size", int, low=1),
            Key("twin_mode", str, choices=("twin", "sa_only", "conv_only")),
            Key("hidden_dropout_prob", float, low=0, high=1, high_open=True),
            Key("inner_size", int, low=1, none_ok=True),
        )
        config_relations = (Relation(("hidden_size", "n_heads"), lambda c: c["hidden_size"] % c["n_heads"] == 0,
                                     "hidden_size must be a multiple of n_heads"),)
        data_rules = (DataRule("compression_rate", check_rate),)   # check_rate(config, dataset) -> message or None
        phases = (Phase("teacher_", "EODRecTeacher", match=("hidden_size",)),)

The run layer (:mod:`recbole_compress.preflight`) checks all of it before any work: key names against exactly the
keys of RecBole plus this model, its trainer and its phases; values against the rules; data rules right after the
dataset loads. Nothing here imports a model, a trainer or RecBole's data code.
"""
import numbers
import os

_KIND_WORDS = {int: "an integer", float: "a number", bool: "True or False", str: "a string", list: "a list",
               dict: "a mapping"}


class Key:
    """One configuration key and the values it allows.

    Args:
        name (str): the key.
        kind (type or None): ``int``, ``float`` (integers accepted), ``bool``, ``str``, ``list``, ``dict``; None
            accepts any value.
        low, high (number): bounds of a number, or of every item of a list with ``items``.
        low_open, high_open (bool): exclude the bound.
        choices (tuple): the allowed values (compared case-sensitively, as the code reads them).
        none_ok (bool): None (``~`` in YAML) is allowed too.
        items (type): for ``kind=list``, the kind of every item (bounds apply to the items); ``nonempty`` lists only.
        file (bool): the value is the path of a file that must exist.
        checkpoint_of (tuple of str): the value is a plugin checkpoint holding one of these models (checked by
            loading it, weights only, before any work).
        neutral: for a key added to a model that already had results, the value with which the model behaves as it
            did before the key existed. While the property file's default is that value, the key is left out of the
            benchmark's defaults digest, so that trainings made before the key was added stay reusable.
    """

    NO_NEUTRAL = object()

    def __init__(self, name, kind=None, *, low=None, high=None, low_open=False, high_open=False, choices=None,
                 none_ok=False, items=None, nonempty=False, file=False, checkpoint_of=None, neutral=NO_NEUTRAL):
        self.name = name
        self.kind = kind
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open
        self.choices = tuple(choices) if choices is not None else None
        self.none_ok = none_ok
        self.items = items
        self.nonempty = nonempty
        self.file = file or checkpoint_of is not None
        self.checkpoint_of = tuple(checkpoint_of) if checkpoint_of is not None else None
        self.neutral = neutral

    def is_neutral(self, value):
        """True when ``value`` is this key's ``neutral`` value (see the class docstring)."""
        return self.neutral is not Key.NO_NEUTRAL and value == self.neutral

    def __repr__(self):
        return f"Key({self.name!r}, {self.allowed()})"

    def _range_words(self):
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high}")
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{self.low}, {self.high}{right}"
        return " and ".join(parts)

    def allowed(self):
        """What the key allows, in words: ``an integer >= 1``, ``one of twin, sa_only``, ..."""
        if self.choices is not None:
            words = "one of " + ", ".join(str(c) for c in self.choices)
        elif self.kind is list and self.items is not None:
            words = f"a {'non-empty ' if self.nonempty else ''}list of {_KIND_WORDS[self.items][3:]}s"
            if self._range_words():
                words += f" {self._range_words()}"
        elif self.checkpoint_of is not None:
            words = f"the path of a recbole-compress checkpoint of {' or '.join(self.checkpoint_of)}"
        elif self.file:
            words = "the path of an existing file"
        else:
            words = _KIND_WORDS.get(self.kind, "any value")
            if self._range_words():
                words += f" {self._range_words()}"
        return words + (" or None" if self.none_ok else "")

    def _kind_ok(self, value, kind):
        if kind is None:
            return True
        if kind is bool:
            return isinstance(value, bool)
        if kind is int:
            return isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if kind is float:
            return isinstance(value, numbers.Real) and not isinstance(value, bool)
        if kind is list:
            return isinstance(value, (list, tuple))
        return isinstance(value, kind)

    def _in_range(self, value):
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def accepts(self, value):
        """True if ``value`` is allowed."""
        if value is None:
            return self.none_ok or (self.kind is None and self.choices is None)
        if self.choices is not None:
            return any(type(value) is type(c) and value == c for c in self.choices)
        if not self._kind_ok(value, self.kind):
            return False
        if self.kind is list:
            if self.nonempty and len(value) == 0:
                return False
            if self.items is not None:
                return all(self._kind_ok(v, self.items) and self._in_range(v) for v in value)
            return True
        if self.kind in (int, float):
            return self._in_range(value)
        if self.file:
            return isinstance(value, str) and os.path.isfile(value)
        return True


class Relation:
    """A rule over several keys, e.g. ``hidden_size % n_heads == 0``.

    Args:
        keys (tuple of str): the keys it reads (named in the message).
        test (callable): ``test(config) -> bool``; it is only called when every key's own rule holds.
        message (str): what must hold, in words.
        when (callable): ``when(config) -> bool``; the relation applies only where this holds (default always).
    """

    def __init__(self, keys, test, message, when=None):
        self.keys = tuple(keys)
        self.test = test
        self.message = message
        self.when = when

    def applies(self, config):
        return self.when is None or bool(self.when(config))


class DataRule:
    """A rule that needs the loaded dataset (checked right after it loads, before any training).

    Args:
        key (str): the key it is about.
        check (callable): ``check(config, dataset) -> str or None``: a message naming the problem and what is allowed,
            or None when the value is fine. It may also return ``("warning", message)`` for a value a user may want on
            purpose.
    """

    def __init__(self, key, check):
        self.key = key
        self.check = check


class Phase:
    """Another model trained in the same run before this one (e.g. a teacher), configured by prefixed keys.

    In the run's configuration, ``<prefix><key>`` is that phase's ``<key>`` (``teacher_epochs: 20``), and
    ``<prefix>model`` / ``<prefix>checkpoint`` choose its model or a trained checkpoint that skips it.

    Args:
        prefix (str): e.g. ``"teacher_"``.
        default_model (str): the phase's model when ``<prefix>model`` is not set.
        models (tuple of str or None): the models allowed for ``<prefix>model`` (None: any model).
        inherit (tuple of str): keys the phase takes from this run unless ``<prefix><key>`` is set (e.g. the
            student's ``hidden_size`` for its teacher).
        match (tuple of str): keys whose phase value must equal this run's (e.g. ``hidden_size``: the student
            mixes the teacher's item table into its own).
        configurable (bool): ``<prefix>model`` may be set by the user (False for an internal phase such as a search
            supernet).
    """

    def __init__(self, prefix, default_model, models=None, inherit=(), match=(), configurable=True):
        self.prefix = prefix
        self.inherit = tuple(inherit)
        self.default_model = default_model
        self.models = tuple(models) if models is not None else None
        self.match = tuple(match)
        self.configurable = configurable

    @property
    def name(self):
        return self.prefix.rstrip("_")

    def model_of(self, config):
        """The phase's model name in ``config``."""
        chosen = config[self.prefix + "model"] if self.configurable else None
        return chosen or self.default_model


def declared(cls, attribute):
    """The union of ``attribute`` (a tuple) over ``cls`` and its bases, subclass entries first; keys by name."""
    seen, out = set(), []
    for klass in getattr(cls, "__mro__", (cls,)):
        for item in klass.__dict__.get(attribute, ()) or ():
            ident = getattr(item, "name", None) if isinstance(item, Key) else getattr(item, "prefix", None)
            if ident is not None:
                if ident in seen:
                    continue
                seen.add(ident)
            out.append(item)
    return tuple(out)


def value_problems(config, keys, relations=(), sources=None):
    """Messages for every value of ``config`` that breaks a rule of ``keys`` or ``relations`` (empty if none).

    Each message names the key, its value and what is allowed, e.g. ``learning_rate=-1 (command line): must be a
    number > 0``. ``sources`` maps a key to where its value was set, for the message.
    """
    problems, bad = [], set()
    for key in keys:
        value = config[key.name]
        if not key.accepts(value):
            where = f" ({sources[key.name]})" if sources and key.name in sources else ""
            problems.append(f"{key.name}={value!r}{where}: must be {key.allowed()}")
            bad.add(key.name)
    for relation in relations:
        if bad & set(relation.keys) or not relation.applies(config):
            continue
        found = ""
        try:
            ok = relation.test(config)
        except (TypeError, ValueError, ZeroDivisionError) as err:
            ok, found = False, f" (found: {err})" if str(err) else ""
        if not ok:
            values = ", ".join(f"{k}={config[k]!r}" for k in relation.keys)
            problems.append(f"{values}: {relation.message}{found}")
    return problems
