"""The repository stands alone: code and docs cite docs/design.md, never a document users lack,
and every "design.md §N" pointer names a section that exists."""

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESIGN = os.path.join(ROOT, 'docs', 'design.md')
# Built in two parts so that this file does not match its own pattern.
_EXTERNAL_CITATION = re.compile(r'\b' + 'SP' + r'EC\b')
# 'docs/design.md §7.4', '[design.md §12](design.md)', 'docs/design.md §7, §9', '... §4-5'.
_SECTION = r'\d+(?:\.\d+)?'
_POINTER = re.compile(rf'design\.md\]?(?:\([^)]*\))?,? (§{_SECTION}(?:(?:, §|-){_SECTION})*)')
_NUMBER = re.compile(_SECTION)


def _tracked_text_files():
    try:
        listing = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True,
                                 check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip('not a git checkout: no list of tracked files')
    for name in filter(None, listing.decode().split('\0')):
        path = os.path.join(ROOT, name)
        if not os.path.isfile(path):
            continue  # deleted in the working tree
        with open(path, 'rb') as f:
            data = f.read()
        if b'\0' not in data:  # text only
            yield name, data.decode('utf-8', errors='replace')


def _design_sections():
    with open(DESIGN, encoding='utf-8') as f:
        return set(re.findall(rf'^#{{2,3}} ({_SECTION})\.? ', f.read(), re.M))


def test_pointer_pattern_reads_both_forms():
    # The forms used in code comments and in markdown links.
    text = ('see docs/design.md §7.4 and [design.md §12](design.md), docs/design.md §7, §9 '
            'and docs/design.md §4-5, ImageNet')
    assert [_NUMBER.findall(p) for p in _POINTER.findall(text)] == [
        ['7.4'], ['12'], ['7', '9'], ['4', '5']]


def test_design_sections_are_numbered():
    sections = _design_sections()
    assert {'1', '7', '7.3', '13'} <= sections


def test_no_citation_of_a_document_outside_the_repository():
    hits = [f'{name}:{text.count(chr(10), 0, m.start()) + 1}'
            for name, text in _tracked_text_files()
            for m in _EXTERNAL_CITATION.finditer(text)]
    assert not hits, f'cite docs/design.md instead, at: {hits}'


def test_design_pointers_name_existing_sections():
    sections = _design_sections()
    broken = [f'{name}: §{number}' for name, text in _tracked_text_files()
              for pointer in _POINTER.findall(text) for number in _NUMBER.findall(pointer)
              if number not in sections]
    assert not broken, f'docs/design.md has no such section: {broken}'
