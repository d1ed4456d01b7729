"""heartmula's ComfyUI custom nodes: copy or link this folder to ComfyUI/custom_nodes/heartmula and install heartmula
into ComfyUI's Python (`pip install 'heartmula[all]'`)."""

from heartmula.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
