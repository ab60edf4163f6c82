"""ComfyUI workflow JSON: build the saved-workflow (UI) format from a compact spec, and turn a
saved workflow into the API prompt POST /prompt takes, using /object_info for widget order
(the same rule the frontend uses: widgets in input order, plus one 'control_after_generate'
value after each seed-like widget)."""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def input_specs(info: dict) -> list[tuple[str, list]]:
    """(name, spec) of a node's inputs in declaration order: required, then optional."""
    out = []
    for section in ("required", "optional"):
        out.extend(info["input"].get(section, {}).items())
    return out


def is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def has_control(spec, name: str = "") -> bool:
    """Whether the frontend adds a 'control after generate' widget (flagged, or an INT named like a seed)."""
    flagged = len(spec) > 1 and isinstance(spec[1], dict) and bool(spec[1].get("control_after_generate"))
    return flagged or (spec[0] == "INT" and name in ("seed", "noise_seed"))


def to_api(workflow: dict, object_info: dict) -> dict:
    """Saved workflow -> API prompt {node id: {"class_type", "inputs"}} (muted/bypassed nodes dropped)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:
            continue
        info = object_info[node["type"]]
        linked = {i["name"]: i.get("link") for i in node.get("inputs", [])}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name, spec in input_specs(info):
            if linked.get(name) is not None:
                _, src, slot, _, _, _ = links[linked[name]]
                inputs[name] = [str(src), slot]
            elif is_widget(spec) and values:
                inputs[name] = values.pop(0)
                if has_control(spec, name) and values:
                    values.pop(0)  # "fixed" / "randomize": a UI-only value
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def build_ui(spec: dict, object_info: dict, title: str = "") -> dict:
    """Compact spec {id: {"type", "pos", "widgets": {name: value}, "links": {input: (src id, src slot)}}}
    -> a saved workflow the ComfyUI frontend loads (LiteGraph format, version 0.4)."""
    links: dict[tuple[int, str], list] = {}  # (destination id, input name) -> link row
    outgoing: dict[tuple[int, int], list[int]] = {}
    for nid, node in spec.items():
        specs = dict(input_specs(object_info[node["type"]]))
        for name, (src, slot) in node.get("links", {}).items():
            link_id = len(links) + 1
            kind = specs[name][0]
            links[(nid, name)] = [link_id, src, slot, nid, None, kind if isinstance(kind, str) else "COMBO"]
            outgoing.setdefault((src, slot), []).append(link_id)
    nodes = []
    for order, (nid, node) in enumerate(spec.items()):
        info = object_info[node["type"]]
        inputs, widgets = [], []
        for name, input_spec in input_specs(info):
            link = links.get((nid, name))
            if link is None and is_widget(input_spec):
                options = input_spec[1] if len(input_spec) > 1 and isinstance(input_spec[1], dict) else {}
                default = options.get("default")
                choices = input_spec[0] if isinstance(input_spec[0], list) else options.get("options")
                if default is None and choices:
                    default = choices[0]
                widgets.append(node.get("widgets", {}).get(name, default))
                if has_control(input_spec, name):
                    widgets.append("fixed")
            elif link is not None or not is_widget(input_spec):
                if link is not None:
                    link[4] = len(inputs)
                inputs.append({"name": name, "type": link[5] if link else input_spec[0],
                               "link": link[0] if link else None})
        outputs = [{"name": info["output_name"][i], "type": t, "links": outgoing.get((nid, i), []), "slot_index": i}
                   for i, t in enumerate(info["output"])]
        nodes.append({"id": nid, "type": node["type"], "pos": list(node["pos"]), "size": list(node.get("size", [320, 200])),
                      "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
                      "properties": {"Node name for S&R": node["type"]}, "widgets_values": widgets,
                      **({"title": node["title"]} if "title" in node else {})})
    return {"last_node_id": max(spec), "last_link_id": len(links), "nodes": nodes,
            "links": sorted(links.values()), "groups": [], "config": {},
            "extra": {"concept_eraser_example": title}, "version": 0.4}
