// Concept Eraser: a live loss curve on the Erase Concept nodes while they train.
// The Python side sends "concept_eraser.loss" events ({node, step, total, loss}) through
// PromptServer.send_sync; this draws the curve under the node's widgets.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const ERASE_NODES = ["ConceptEraser_EraseDT", "ConceptEraser_EraseCG"];
const CURVE_HEIGHT = 70;

function findNode(id) {
  return app.graph?.getNodeById?.(Number(id)) ?? null;
}

function drawCurve(ctx, node, losses, total) {
  const w = node.size[0] - 20;
  const top = node.size[1] - CURVE_HEIGHT - 6;
  ctx.save();
  ctx.fillStyle = "#1b1b20";
  ctx.fillRect(10, top, w, CURVE_HEIGHT);
  if (losses.length > 0) {
    const lo = Math.min(...losses), hi = Math.max(...losses);
    const span = hi - lo || 1; // a constant loss still draws as a flat line
    const n = Math.max(total - 1, losses.length - 1, 1);
    ctx.strokeStyle = "#5ac8fa";
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    losses.forEach((v, i) => {
      const x = 10 + (w * i) / n;
      const y = top + CURVE_HEIGHT - 14 - ((CURVE_HEIGHT - 22) * (v - lo)) / span;
      i === 0 ? ctx.moveTo(x, y) : ctx.lineTo(x, y);
    });
    ctx.stroke();
    ctx.fillStyle = "#ddd";
    ctx.font = "11px sans-serif";
    ctx.fillText(`step ${losses.length}/${total}  loss ${losses[losses.length - 1].toFixed(4)}`, 14, top + CURVE_HEIGHT - 3);
  }
  ctx.restore();
}

app.registerExtension({
  name: "concept_eraser.loss_curve",

  async setup() {
    api.addEventListener("concept_eraser.loss", ({ detail }) => {
      const node = findNode(detail.node);
      if (!node) return;
      if (detail.step === 1 || !node.conceptEraserLoss) node.conceptEraserLoss = { losses: [], total: detail.total };
      node.conceptEraserLoss.losses.push(detail.loss);
      node.conceptEraserLoss.total = detail.total;
      const minHeight = node.computeSize()[1] + CURVE_HEIGHT + 10;
      if (node.size[1] < minHeight) node.setSize([node.size[0], minHeight]);
      node.setDirtyCanvas(true, true);
    });
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!ERASE_NODES.includes(nodeData.name)) return;
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      if (this.conceptEraserLoss && !this.flags?.collapsed) {
        drawCurve(ctx, this, this.conceptEraserLoss.losses, this.conceptEraserLoss.total);
      }
    };
  },
});
