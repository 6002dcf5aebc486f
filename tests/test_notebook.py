"""astroclass in a real Jupyter kernel (nbclient): a notebook's outputs hold the progress of training and the
rich displays of a dataset, a run and its history."""

from __future__ import annotations

from pathlib import Path


def test_a_notebook_shows_progress_and_rich_displays(tiny_h5, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    cells = [f"import astroclass\nds = astroclass.Dataset.open({str(tiny_h5)!r})",
             f"run = astroclass.fit(ds, model='test_resnet', epochs=2, batch_size=16, progress=True, "
             f"output={str(tmp_path / 'run')!r})",
             "run", "ds", "run.history", "import matplotlib\nprint(matplotlib.get_backend())"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.write(nb, tmp_path / "executed.ipynb")  # kept beside the run, to look at when this fails

    def text(cell) -> str:
        return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")

    def html(cell) -> str:
        return "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs if "data" in o)

    fit = nb.cells[1]
    assert "[test_resnet train   1]" in text(fit) and "[test_resnet train   2]" in text(fit)
    assert "train epoch 1: 0/" in text(fit)  # plain progress lines: no bar can be drawn here
    everything = "".join(text(c) + html(c) for c in nb.cells)
    assert "ipywidgets" not in everything and "Traceback" not in everything
    assert "balanced accuracy" in html(nb.cells[2]) and "data:image/png;base64" in html(nb.cells[2])
    assert "contact sheet" in html(nb.cells[3]) and "<th>train</th>" in html(nb.cells[3])
    assert "val_loss" in html(nb.cells[4]) and Path(tmp_path / "run" / "checkpoint.pt").exists()
    assert "inline" in text(nb.cells[5])  # the displays drew without taking the notebook's plotting backend
