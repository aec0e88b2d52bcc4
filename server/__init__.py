"""The web view: Bokeh/HoloViews/Datashader handlers over pure render functions."""
