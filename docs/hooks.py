"""The documentation site's figures come from results/, where the scripts draw them: each page links them as
../results/NAME.png (so that they show on the repository's own view of docs/ too), and the site gets a copy."""

from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parent.parent / "results"


def on_files(files, config):
    for figure in sorted(RESULTS.glob("*.png")):
        files.append(File(f"results/{figure.name}", src_dir=str(RESULTS.parent), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    return markdown.replace("](../results/", "](results/")
