// Draws an image and a label map over it: a filled overlay (adjustable opacity) and the
// outline of each region, at the image's own pixel size (the canvas is scaled by CSS).

const FILL = [255, 64, 64];
const EDGE = [255, 230, 0];

export function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`cannot load ${url}`));
    img.src = url;
  });
}

function labelsOf(img) {
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(img, 0, 0);
  return ctx.getImageData(0, 0, c.width, c.height).data;  // grey: R = label
}

export function draw(canvas, image, labelImage, opacity) {
  const w = image.naturalWidth, h = image.naturalHeight;
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(image, 0, 0);
  if (!labelImage || opacity <= 0) return 0;
  const labels = labelsOf(labelImage);
  const frame = ctx.getImageData(0, 0, w, h);
  const px = frame.data;
  let inside = 0;
  const at = (x, y) => (x < 0 || y < 0 || x >= w || y >= h) ? 0 : labels[(y * w + x) * 4];
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (!at(x, y)) continue;
      inside++;
      const i = (y * w + x) * 4;
      const edge = !at(x - 1, y) || !at(x + 1, y) || !at(x, y - 1) || !at(x, y + 1);
      const colour = edge ? EDGE : FILL;
      const a = edge ? Math.max(opacity, 0.8) : opacity;
      for (let k = 0; k < 3; k++) px[i + k] = Math.round(px[i + k] * (1 - a) + colour[k] * a);
    }
  }
  ctx.putImageData(frame, 0, 0);
  return inside;
}
