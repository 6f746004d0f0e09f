// The slide page: the slide in deep zoom (OpenSeadragon over /dzi/), tissue outline, kept tile grid, score layers
// (tile-classifier probability, ABMIL attention) with opacity and colour bars, the top tiles, a scale bar.
"use strict";

const slideId = decodeURIComponent(location.pathname.split("/").pop());
const api = `/api/slides/${encodeURIComponent(slideId)}`;
const state = { viewer: null, main: null, detail: null, layers: {}, svgs: {}, highlight: null,
                tilesLoaded: 0, tilesFailed: 0 };
window.gcmae = state;  // for the browser test and the curious

function el(tag, props, children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children || []) node.append(child);
  return node;
}

function message(text) { document.getElementById("message").textContent = text; }

function opacity() { return Number(document.getElementById("opacity").value); }

// a layer image placed over the slide in level-0 pixels (the slide's width is 1 in viewport units)
function addImageLayer(key, url, layout, layerOpacity) {
  const width = state.detail.dimensions[0];
  return new Promise((resolve, reject) => {
    state.viewer.addTiledImage({
      tileSource: { type: "image", url }, x: layout.x / width, y: layout.y / width, width: layout.width / width,
      opacity: layerOpacity,
      success: (event) => { state.layers[key] = event.item; document.body.dataset[`layer_${key.replace(/\W/g, "_")}`] = "loaded"; resolve(event.item); },
      error: (event) => { console.error(`layer ${key} failed: ${event.message}`); reject(event); },
    });
  });
}

async function toggleLayer(key, url, on, layerOpacity) {
  if (!state.layers[key]) {
    if (!on) return;
    await addImageLayer(key, url, state.detail.layout, layerOpacity);
  }
  state.layers[key].setOpacity(on ? layerOpacity : 0);
  showColourBars();
}

function scoreLayerOn(id) { const box = document.getElementById(`toggle-${id}`); return box && box.checked; }

function showColourBars() {
  const bars = document.getElementById("colourbars");
  bars.replaceChildren();
  for (const layer of state.detail.layers || []) {
    if (!scoreLayerOn(layer.id)) continue;
    const gradient = `linear-gradient(to right, ${layer.colours.join(", ")})`;
    bars.append(el("div", { className: "colourbar" }, [
      el("div", { textContent: `${layer.label} (${layer.scale || ""})` }),
      el("div", { className: "bar", style: `background: ${gradient}` }),
      el("div", { className: "ticks" }, ["0", "0.5", "1"].map((t) => el("span", { textContent: t })))]));
  }
}

// an SVG over the whole slide (level-0 px as its user units) with one path; thin lines at any zoom
function svgOverlay(id, className, d) {
  const [w, h] = state.detail.dimensions;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", className);
  svg.style.width = "100%"; svg.style.height = "100%";
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", d);
  svg.append(path);
  const box = el("div", { id }, [svg]);
  box.style.pointerEvents = "none";
  state.viewer.addOverlay({ element: box, location: new OpenSeadragon.Rect(0, 0, 1, h / w) });
  return box;
}

function tissuePath(geojson) {
  let d = "";
  for (const feature of geojson.features || []) {
    const g = feature.geometry || {};
    const polygons = g.type === "MultiPolygon" ? g.coordinates : g.type === "Polygon" ? [g.coordinates] : [];
    for (const polygon of polygons) {
      for (const ring of polygon) d += "M" + ring.map(([x, y]) => `${x} ${y}`).join("L") + "Z";
    }
  }
  return d;
}

async function toggleSvg(key, url, className, makePath, on) {
  if (on && !state.svgs[key]) {
    const response = await fetch(url);
    if (!response.ok) { message(`cannot load ${key}: ${response.status}`); console.error(`${key}: ${response.status}`); return; }
    state.svgs[key] = svgOverlay(`${key}-overlay`, className, makePath(await response.json()));
    document.body.dataset[`layer_${key}`] = "loaded";
  }
  if (state.svgs[key]) state.svgs[key].style.display = on ? "" : "none";
}

const toggleTissue = (on) => toggleSvg("tissue", `${api}/tissue.geojson`, "tissue", tissuePath, on);
const toggleGrid = (on) => toggleSvg("grid", `${api}/tiles.json`, "grid",
  (t) => t.coords.map(([x, y]) => `M${x} ${y}h${t.size}v${t.size}h${-t.size}Z`).join(""), on);

function flyTo(tile) {
  const rect = state.main.imageToViewportRectangle(tile.x, tile.y, tile.size, tile.size);
  const context = state.main.imageToViewportRectangle(tile.x - tile.size, tile.y - tile.size, 3 * tile.size, 3 * tile.size);
  state.viewer.viewport.fitBounds(context, false);
  if (state.highlight) state.viewer.removeOverlay(state.highlight);
  state.highlight = el("div", { className: "highlight" });
  state.viewer.addOverlay({ element: state.highlight, location: rect });
}

function showTop() {
  const layers = state.detail.layers || [];
  const layer = layers.find((l) => l.kind === "attention" && l.top) || layers.find((l) => l.top);
  const list = document.getElementById("top-list");
  if (!layer) { document.getElementById("top").hidden = true; return; }
  if (layer.kind !== "attention") document.querySelector("#top h2").textContent = `Top tiles: ${layer.label}`;
  layer.top.forEach((tile, i) => {
    const item = el("li", { textContent: `(${tile.x}, ${tile.y}) ${layer.kind === "attention" ? "attention" : "score"} ${tile.score.toPrecision(3)}` });
    item.dataset.rank = String(i);
    item.addEventListener("click", () => flyTo(tile));
    list.append(item);
  });
}

function niceLength(um) {
  const p = Math.pow(10, Math.floor(Math.log10(um)));
  for (const m of [5, 2, 1]) if (m * p <= um) return m * p;
  return p;
}

function updateScaleBar() {
  const mpp = state.detail.mpp;
  const bar = document.getElementById("scalebar");
  if (!mpp || !state.main) { bar.hidden = true; return; }
  const zoom = state.main.viewportToImageZoom(state.viewer.viewport.getZoom(true));  // screen px per slide px
  const um = niceLength((120 * mpp) / zoom);
  document.getElementById("scalebar-bar").style.width = `${(um * zoom) / mpp}px`;
  document.getElementById("scalebar-label").textContent = um >= 1000 ? `${um / 1000} mm` : `${um} µm`;
  bar.hidden = false;
}

function buildPanel() {
  const d = state.detail;
  const tissueBox = document.getElementById("toggle-tissue");
  tissueBox.disabled = !d.tissue;
  tissueBox.checked = !!d.tissue;
  tissueBox.addEventListener("change", () => toggleTissue(tissueBox.checked));
  const gridBox = document.getElementById("toggle-grid");
  gridBox.addEventListener("change", () => toggleGrid(gridBox.checked));
  const holder = document.getElementById("score-layers");
  for (const layer of d.layers || []) {
    const box = el("input", { type: "checkbox", id: `toggle-${layer.id}`, disabled: !!layer.error });
    const url = `${api}/overlays/${encodeURIComponent(layer.id)}.png`;
    box.addEventListener("change", () => toggleLayer(layer.id, url, box.checked, opacity()));
    holder.append(el("label", { title: layer.error || "" }, [box, ` ${layer.label}` + (layer.error ? " (unreadable)" : "")]));
  }
  document.getElementById("opacity").addEventListener("input", () => {
    for (const layer of d.layers || []) {
      if (state.layers[layer.id]) state.layers[layer.id].setOpacity(scoreLayerOn(layer.id) ? opacity() : 0);
    }
  });
  if (d.prediction && d.prediction.predicted) {
    const probs = Object.entries(d.prediction.probabilities || {}).map(([c, p]) => `${c} ${Number(p).toFixed(3)}`);
    document.getElementById("prediction").append(el("h2", { textContent: "Slide prediction" }),
      el("p", { textContent: `${d.prediction.predicted} (${probs.join(", ")})` }),
      el("p", { textContent: "Research output of a MIL model; not a clinical diagnosis." }));
  }
  showTop();
}

async function main() {
  document.getElementById("title").textContent = slideId;
  const response = await fetch(api);
  if (!response.ok) { message(`no such slide: ${response.status}`); return; }
  const d = state.detail = await response.json();
  const mpp = d.mpp ? `${d.mpp.toFixed(3)} µm/px` : "MPP unknown";
  document.getElementById("summary").textContent =
    `${d.slide || ""} · ${d.dimensions ? d.dimensions.join(" × ") : ""} px · ${mpp} · ${d.num_tiles ?? 0} tiles · ${d.status.join(", ")}`;
  if (!d.viewable) {
    message(d.num_tiles === null ? `not tiled yet (${d.status.join(", ")})` : `the slide file is not found: ${d.slide}`);
    if (d.thumbnail) document.getElementById("viewer").append(el("img", { src: `${api}/thumbnail.png`, alt: slideId }));
    return;
  }
  state.viewer = OpenSeadragon({
    id: "viewer", prefixUrl: "/static/openseadragon/images/", tileSources: `/dzi/${encodeURIComponent(slideId)}.dzi`,
    drawer: "canvas", showNavigator: true, navigatorPosition: "TOP_RIGHT", maxZoomPixelRatio: 4,
    crossOriginPolicy: false, timeout: 60000,
  });
  state.viewer.addHandler("tile-loaded", () => { state.tilesLoaded += 1; document.body.dataset.tilesLoaded = String(state.tilesLoaded); });
  state.viewer.addHandler("tile-load-failed", (event) => { state.tilesFailed += 1; console.error(`tile failed: ${event.message}`); });
  state.viewer.addHandler("open-failed", (event) => { message(`cannot open the slide: ${event.message}`); console.error(event.message); });
  state.viewer.addHandler("animation", updateScaleBar);
  state.viewer.addHandler("open", () => {
    state.main = state.viewer.world.getItemAt(0);
    buildPanel();
    updateScaleBar();
    if (d.tissue) toggleTissue(true);
    document.body.dataset.ready = "1";
  });
}

main().catch((err) => { message(`error: ${err}`); console.error(err); });
