"""A classifier's results per class on its test split: the confusion matrix, each class's accuracy, a picture.

``zoo test`` writes them beside ``test-metrics.json``: ``confusion.json`` (rows are the true
classes, columns the predicted ones) and ``confusion.png`` (cells shaded by the share of their
row, counts printed where they fit). A model with no single prediction of one score per class
has none.
"""

from __future__ import annotations

from typing import Any, Callable, ContextManager

import torch
from PIL import Image, ImageDraw, ImageFont

from zoo.engine.feed import to_device
from zoo.recipe import predictor

MAX_DRAWN = 40  # classes a confusion picture shows (ImageNet's 1000 would be unreadable): JSON only above
CELL = 28  # pixels of a cell
SHADE = (31, 94, 168)  # a full row's colour (white for none)


def confusion_matrix(recipe: Any, loader: Any, device: torch.device, autocast: Callable[[], ContextManager],
                     classes: int) -> torch.Tensor | None:
    """``(classes, classes)`` counts of (true, predicted) over ``loader``'s batches; ``None`` if the model has
    no prediction of one score per class. Unreadable samples are left out (``zoo test`` counts them)."""
    method = predictor(recipe)
    if method is None or classes < 1:
        return None
    matrix = torch.zeros(classes * classes, dtype=torch.int64, device=device)
    was_training = recipe.training
    recipe.eval()
    try:
        with torch.no_grad():
            for batch, _bad in loader:
                if batch is None:
                    continue
                images, labels = to_device(batch, device, non_blocking=True)
                with autocast():
                    scores = method(images)
                if not isinstance(scores, torch.Tensor) or scores.shape != (len(labels), classes):
                    return None
                matrix += torch.bincount(labels * classes + scores.argmax(dim=1), minlength=classes * classes)
    finally:
        recipe.train(was_training)
    return matrix.view(classes, classes).cpu()


def confusion_record(matrix: torch.Tensor, names: list[str]) -> dict[str, Any]:
    """The matrix with its class names and each class's accuracy (its right share), support and predictions."""
    support, right, predicted = matrix.sum(dim=1), matrix.diagonal(), matrix.sum(dim=0)
    per_class = {name: {"accuracy": int(right[i]) / int(support[i]) if int(support[i]) else None,
                        "support": int(support[i]), "predicted": int(predicted[i])} for i, name in enumerate(names)}
    return {"rows": "true class", "columns": "predicted class", "classes": names, "matrix": matrix.tolist(),
            "per_class": per_class}


def confusion_image(matrix: torch.Tensor, names: list[str]) -> Image.Image:
    """The matrix as a picture: a row per true class, a column per prediction, shaded by the row's share."""
    font = ImageFont.load_default()
    count = len(names)
    label_width = max(90, 6 + int(max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(n, font=font)
                                      for n in names)))  # room for the key in the corner too
    left, top = label_width, label_width  # the column names are written upwards
    image = Image.new("RGB", (left + count * CELL + 1, top + count * CELL + 1), "white")
    draw = ImageDraw.Draw(image)
    draw.text((2, top - 26), "rows: true class", fill="black", font=font)
    draw.text((2, top - 14), "columns: predicted", fill="black", font=font)
    shares = matrix.double() / matrix.sum(dim=1, keepdim=True).clamp(min=1)
    for row in range(count):
        draw.text((2, top + row * CELL + CELL // 2 - 5), names[row], fill="black", font=font)
        for column in range(count):
            share = float(shares[row, column])
            colour = tuple(round(255 - share * (255 - c)) for c in SHADE)
            box = (left + column * CELL, top + row * CELL, left + (column + 1) * CELL, top + (row + 1) * CELL)
            draw.rectangle(box, fill=colour, outline=(200, 200, 200))
            text = str(int(matrix[row, column]))
            if int(matrix[row, column]) and draw.textlength(text, font=font) < CELL - 2:
                draw.text((box[0] + 2, box[1] + CELL // 2 - 5), text, fill="white" if share > 0.5 else "black",
                          font=font)
    for column, name in enumerate(names):  # column names, rotated to read upwards
        label = Image.new("RGB", (label_width, CELL), "white")
        ImageDraw.Draw(label).text((2, CELL // 2 - 5), name, fill="black", font=font)
        image.paste(label.rotate(90, expand=True), (left + column * CELL, 0))
    return image
