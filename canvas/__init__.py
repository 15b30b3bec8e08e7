"""The canvas layer: signatures, chains, groups and chords, and their compilation.

This layer imports nothing else of Stem. It defines what a canvas means (its
value rules, compiled into a `GraphSpec`) and how a spec is drawn.
"""

from stem.canvas.compiler import compile_canvas as compile_canvas
from stem.canvas.errors import CanvasError as CanvasError
from stem.canvas.errors import InvalidCanvas as InvalidCanvas
from stem.canvas.errors import InvalidOption as InvalidOption
from stem.canvas.errors import NotSerializable as NotSerializable
from stem.canvas.errors import StemError as StemError
from stem.canvas.errors import StemInternalError as StemInternalError
from stem.canvas.errors import UnboundCanvas as UnboundCanvas
from stem.canvas.errors import UndecodableValue as UndecodableValue
from stem.canvas.primitives import Canvas as Canvas
from stem.canvas.primitives import Chain as Chain
from stem.canvas.primitives import Chord as Chord
from stem.canvas.primitives import Group as Group
from stem.canvas.primitives import Signature as Signature
from stem.canvas.primitives import Submitter as Submitter
from stem.canvas.primitives import chain as chain
from stem.canvas.primitives import chord as chord
from stem.canvas.primitives import chunks as chunks
from stem.canvas.primitives import group as group
from stem.canvas.primitives import signature as signature
from stem.canvas.primitives import starmap as starmap
from stem.canvas.primitives import xmap as xmap
from stem.canvas.spec import GraphSpec as GraphSpec
from stem.canvas.spec import GroupSpec as GroupSpec
from stem.canvas.spec import NodeSpec as NodeSpec
from stem.canvas.spec import node_order as node_order

compile = compile_canvas
